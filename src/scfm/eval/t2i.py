"""Text-to-image evaluation as the paper reports it: CLIP score, FID and dFID, via torchmetrics.

The public API, gathered from three modules:

- :mod:`scfm.eval.t2i_metrics`: the metrics on images [B, 3, H, W] float in [0, 1]:
  :class:`ClipScorer` / :func:`clip_score` (CLIP score), the FID feature extractors
  (:func:`load_inception`, :func:`resolve_fid_features`, ...), :class:`FrechetScorer` (FID and
  the paper's dFID against a fixed reference set) and :func:`frechet_distance_images`.
- :mod:`scfm.eval.t2i_inputs`: :func:`load_prompts` (the prompt file) and the folder of real
  reference images (:func:`load_reference_folder`, ...).
- :mod:`scfm.eval.t2i_report`: the driver :func:`evaluate_text_to_image`, which runs two
  ``generate(prompts, steps, seed)`` callables (teacher and student) over the prompts at several
  step counts and writes ``t2i_metrics.json``, one teacher-vs-student PNG grid per step count
  and a metrics plot; and those figures (:func:`save_labelled_rows`, :func:`plot_t2i_metrics`).

Every FID comes with its sample count ``n`` and a warning while n is below the feature width
(the FID is then biased upward); numbers compare only at equal n and features.
"""

from __future__ import annotations

from scfm.eval.t2i_inputs import (
    IMAGE_SUFFIXES,
    PROMPT_KEYS,
    iter_reference_folder,
    list_reference_images,
    load_prompts,
    load_reference_folder,
)
from scfm.eval.t2i_metrics import (
    DEFAULT_CLIP,
    INCEPTION_FEATURE_DIM,
    ClipScorer,
    FidFeatures,
    FrechetScorer,
    PathLike,
    check_images,
    clip_score,
    fid_warning,
    frechet_distance_images,
    has_torch_fidelity,
    load_clip,
    load_feature_callable,
    load_inception,
    load_scorers,
    resolve_fid_features,
    to_uint8,
)
from scfm.eval.t2i_report import (
    GenerateFn,
    check_eval_plan,
    evaluate_text_to_image,
    plot_t2i_metrics,
    save_labelled_rows,
)

__all__ = [
    "DEFAULT_CLIP",
    "IMAGE_SUFFIXES",
    "INCEPTION_FEATURE_DIM",
    "PROMPT_KEYS",
    "ClipScorer",
    "FidFeatures",
    "FrechetScorer",
    "GenerateFn",
    "PathLike",
    "check_eval_plan",
    "check_images",
    "clip_score",
    "evaluate_text_to_image",
    "fid_warning",
    "frechet_distance_images",
    "has_torch_fidelity",
    "iter_reference_folder",
    "list_reference_images",
    "load_clip",
    "load_feature_callable",
    "load_inception",
    "load_prompts",
    "load_reference_folder",
    "load_scorers",
    "plot_t2i_metrics",
    "resolve_fid_features",
    "save_labelled_rows",
    "to_uint8",
]
