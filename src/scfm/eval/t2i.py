"""Text-to-image evaluation as the paper reports it: CLIP score, FID and dFID, via torchmetrics.

The metric layer works on images [B, 3, H, W] float in [0, 1] and their prompts, whatever made
them; :func:`evaluate_text_to_image` drives two ``generate(prompts, steps, seed)`` callables
(teacher and student) over a prompt list at several step counts and writes
``t2i_metrics.json``, one teacher-vs-student PNG grid per step count and a metrics plot.

- **CLIP score** (``torchmetrics.multimodal.CLIPScore``): mean over samples of
  ``100 * cos(image embedding, prompt embedding)``, clamped at 0 (higher is better). The
  images are quantised to uint8 first, as saving them as PNGs would.
- **FID** (``torchmetrics.image.fid.FrechetInceptionDistance``): Fréchet distance between
  Gaussian fits of feature sets, with the real Inception-v3 (needs ``torch-fidelity``; weights
  from a local file or downloaded by torch-fidelity), the CLIP image embeddings (FD-CLIP), or
  any feature module ``images [B, 3, H, W] in [0, 1] -> [B, D]``.
- **dFID** (the paper's "abs dFID"): FID of student samples against the teacher's samples
  for the same prompts and seeds (teacher at its own step count, e.g. 32 or 28).

FID needs at least 2 samples per side and is biased upward, strongly so while the sample
count n is below the feature width D (rank-deficient covariances): every FID comes with its
``n``, a warning is issued when n < D, and numbers compare only at equal n and features.

Model weights (CLIP, Inception) come from a local folder/file or the Hugging Face hub; a
missing one raises an error that says how to provide it, before any image is generated.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from scfm.fileio import atomic_write_bytes, atomic_write_json, load_safetensors

PathLike = str | os.PathLike

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
"""CLIP used for CLIP scores unless another is given (ViT-L/14, as torchmetrics' default)."""

INCEPTION_FEATURE_DIM = 2048
"""Width of the Inception-v3 pool features that FID uses."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
"""Files :func:`load_reference_folder` reads (case-insensitive)."""

GenerateFn = Callable[[list[str], int, int], Tensor]
"""``generate(prompts, steps, seed) -> images [len(prompts), 3, H, W] in [0, 1]``; ``seed`` is that
of the first prompt of the batch (prompt j of the batch should use ``seed + j``)."""

_CLIP_FIX = (
    "pass --clip PATH to a local folder written by save_pretrained() of openai/clip-vit-large-patch14 "
    "(model AND processor: CLIPModel.from_pretrained(id).save_pretrained(PATH); "
    "CLIPProcessor.from_pretrained(id).save_pretrained(PATH) on a machine with network), "
    "or a hub id with network access (unset HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE), or --clip none to skip CLIP scores"
)
_FID_WEIGHTS_FIX = (
    "pass --inception-weights PATH to the converted TF FID Inception weights (pt_inception-2015-12-05-6726825d.pth "
    "from pytorch-fid's releases or weights-inception-2015-12-05-6726825d.pth from torch-fidelity's, or a .safetensors copy)"
)
_FID_OTHER = (
    "or give --fid-features another extractor ('clip' for FD-CLIP, 'module:function' or 'file.py:function' "
    "returning an nn.Module images [B, 3, H, W] in [0, 1] -> [B, D]), or --fid-features none to skip FID"
)
_FID_SPEC = (
    "--fid-features takes 'inception', 'clip', 'none', or 'module:function' / 'file.py:function' where function() "
    "returns an nn.Module mapping images [B, 3, H, W] float in [0, 1] to features [B, D]"
)
_FID_FIX = f"pip install torch-fidelity (it pulls torchvision: install the build matching your torch) and {_FID_WEIGHTS_FIX}; {_FID_OTHER}"


def _import_torchmetrics() -> Any:
    try:
        import torchmetrics  # noqa: F401
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("text-to-image evaluation needs torchmetrics and transformers: pip install 'scfm[eval]'") from err
    return torchmetrics


def to_uint8(images: Tensor) -> Tensor:
    """Images [B, C, H, W] float in [0, 1] -> uint8 in [0, 255] (rounded, clamped), as a PNG stores them."""
    return (images.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def check_images(images: Tensor, name: str = "images", batch: int | None = None) -> Tensor:
    """Validate images [B, 3, H, W] float in [0, 1]; returns them clamped to [0, 1] as float32.

    Raises ``ValueError`` naming ``name`` for a wrong shape or dtype, a batch size other than
    ``batch`` (if given) or NaN / inf values.
    """
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{name} has shape {shape}; expected RGB images [B, 3, H, W] float in [0, 1]")
    if not images.is_floating_point():
        raise ValueError(f"{name} has dtype {images.dtype}; expected float images in [0, 1] (divide uint8 images by 255)")
    if batch is not None and images.shape[0] != batch:
        raise ValueError(f"{name} holds {images.shape[0]} images for {batch} prompts; generate must return one image per prompt")
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} contains NaN or inf; the sampler diverged (check steps, shift and LoRA scale)")
    return images.float().clamp(0.0, 1.0)


# ----------------------------------------------------------------------------------------- CLIP
class _ClipEmbeddings(nn.Module):
    """A ``CLIPModel`` whose ``get_*_features`` return projected embeddings [B, P] as tensors.

    transformers >= 5 returns a ``BaseModelOutputWithPooling`` there (``pooler_output`` holds the
    projection), which torchmetrics 1.9 does not unwrap (Lightning-AI/torchmetrics#3407).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    @staticmethod
    def _tensor(out: Any) -> Tensor:
        return out if isinstance(out, Tensor) else out.pooler_output

    def get_image_features(self, pixel_values: Tensor, **kw: Any) -> Tensor:
        return self._tensor(self.model.get_image_features(pixel_values=pixel_values, **kw))

    def get_text_features(self, input_ids: Tensor, attention_mask: Tensor | None = None, **kw: Any) -> Tensor:
        return self._tensor(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask, **kw))


class _TruncatingProcessor:
    """A ``CLIPProcessor`` that cuts prompts to the text model's length with the tokenizer.

    The tokenizer keeps the end token that CLIP pools at; torchmetrics, handed longer ids,
    would cut them after the fact and drop it.
    """

    def __init__(self, processor: Any, max_length: int) -> None:
        self.processor = processor
        self.max_length = max_length

    def __call__(self, *args: Any, **kw: Any) -> Any:
        if kw.get("text") is not None:
            kw.setdefault("truncation", True)
            kw.setdefault("max_length", self.max_length)
        return self.processor(*args, **kw)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _is_hub_id(name: str) -> bool:
    """True for ``org/name`` strings (hub ids); anything else is taken as a local path."""
    return bool(_HUB_ID.match(name)) and not name.startswith(".")


def load_clip(clip_model: str | PathLike, local_files_only: bool | None = None) -> tuple[nn.Module, Any]:
    """Load ``(CLIPModel, CLIPProcessor)`` from a local ``save_pretrained`` folder or a hub id.

    The model comes back in eval mode with ``requires_grad`` off, float32, on the CPU.
    ``local_files_only`` None follows ``HF_HUB_OFFLINE`` (transformers' own rule).

    Raises ``FileNotFoundError`` for a path that does not exist, ``ValueError`` for a folder
    that is not a CLIP model or lacks its processor, and ``OSError`` when a hub id cannot be
    fetched; each message says how to provide the model.
    """
    _import_torchmetrics()
    from transformers import AutoConfig, CLIPModel, CLIPProcessor

    name = os.fspath(clip_model)
    local = os.path.isdir(os.path.expanduser(name))
    if local:
        name = os.path.expanduser(name)
    elif os.path.exists(os.path.expanduser(name)) or not _is_hub_id(name):
        raise FileNotFoundError(f"--clip {name!r} is not a model folder (no such directory); {_CLIP_FIX}")
    kw: dict[str, Any] = {} if local_files_only is None else {"local_files_only": local_files_only}
    try:
        config = AutoConfig.from_pretrained(name, **kw)
    except (OSError, ValueError) as err:
        where = "folder" if local else "hub id"
        raise OSError(f"could not load the CLIP config from {where} {name!r} ({type(err).__name__}: {err}); {_CLIP_FIX}") from err
    model_type = getattr(config, "model_type", None)
    if model_type != "clip":
        raise ValueError(f"--clip {name!r} holds a {model_type!r} model, not a CLIP model (model_type 'clip'); {_CLIP_FIX}")
    try:
        processor = CLIPProcessor.from_pretrained(name, **kw)
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(
            f"--clip {name!r} has no usable CLIP processor (tokenizer + image processor): {err}; "
            f"save it next to the model with CLIPProcessor.from_pretrained(ID).save_pretrained({name!r}). {_CLIP_FIX}"
        ) from err
    try:
        model = CLIPModel.from_pretrained(name, **kw)
    except (OSError, ValueError) as err:
        raise OSError(f"could not load the CLIP weights from {name!r} ({err}); {_CLIP_FIX}") from err
    model.float().eval().requires_grad_(False)  # transformers 5 keeps the checkpoint dtype by default
    return model, processor


class ClipScorer:
    """CLIP score of images against prompts, accumulated over batches (torchmetrics ``CLIPScore``).

    Args:
        clip_model: local ``save_pretrained`` folder or hub id of a CLIP model with its processor.
        device: where CLIP runs; images may live anywhere.
        local_files_only: passed to ``from_pretrained``; None follows ``HF_HUB_OFFLINE``.

    ``update(images, prompts)`` adds a batch; ``compute()`` is the mean ``100 * cos`` over all
    added pairs (clamped at 0); ``reset()`` starts a new set.
    """

    def __init__(self, clip_model: str | PathLike = DEFAULT_CLIP, device: str | torch.device = "cpu", local_files_only: bool | None = None) -> None:
        _import_torchmetrics()
        from torchmetrics.multimodal.clip_score import CLIPScore

        self.name = os.fspath(clip_model)
        model, processor = load_clip(clip_model, local_files_only)
        self.model = _ClipEmbeddings(model)
        self.processor = _TruncatingProcessor(processor, int(model.config.text_config.max_position_embeddings))
        self.device = torch.device(device)
        self.metric = CLIPScore(model_name_or_path=lambda: (self.model, self.processor)).to(self.device)
        self.n = 0

    def reset(self) -> None:
        self.metric.reset()
        self.n = 0

    @torch.inference_mode()
    def update(self, images: Tensor, prompts: Sequence[str]) -> None:
        """Add images [B, 3, H, W] in [0, 1] and their B prompts."""
        images = check_images(images, "images", batch=len(prompts))
        self.metric.update(to_uint8(images).to(self.device), list(prompts))
        self.n += len(prompts)

    def compute(self) -> float:
        """Mean CLIP score in [0, 100] over everything added since the last reset."""
        if self.n == 0:
            raise ValueError("no images were added; call update(images, prompts) first")
        return float(self.metric.compute())

    @torch.inference_mode()
    def image_embeddings(self, images: Tensor) -> Tensor:
        """Projected CLIP image embeddings [B, P] float32 for images [B, 3, H, W] in [0, 1]."""
        images = check_images(images)
        pixels = self.processor(images=list(to_uint8(images).cpu()), return_tensors="pt")["pixel_values"]
        self.model.to(self.device)
        return self.model.get_image_features(pixels.to(self.device)).float()


def clip_score(images: Tensor, prompts: Sequence[str], clip_model: str | PathLike | ClipScorer = DEFAULT_CLIP) -> float:
    """Mean CLIP score (``100 * cos``, clamped at 0) of images [B, 3, H, W] in [0, 1] against B prompts.

    ``clip_model`` is a local ``save_pretrained`` folder, a hub id, or a loaded :class:`ClipScorer`.
    """
    scorer = clip_model if isinstance(clip_model, ClipScorer) else ClipScorer(clip_model)
    scorer.reset()
    scorer.update(images, prompts)
    return scorer.compute()


# ------------------------------------------------------------------------------------------ FID
@dataclass
class FidFeatures:
    """A feature extractor for Fréchet distances.

    module: ``images -> features [B, D]``; its input is uint8 [B, 3, H, W] in [0, 255]
        (``input="uint8"``, Inception's convention) or float [B, 3, H, W] in [0, 1]
        (``input="float"``, every other extractor).
    name: recorded next to the scores (``"inception-v3-2048"``, ``"clip"``, ...).
    dim: feature width D, or None to let torchmetrics probe it with one dummy image.
    """

    module: nn.Module
    name: str
    input: Literal["uint8", "float"] = "float"
    dim: int | None = None


class _ClipImageFeatures(nn.Module):
    """CLIP image embeddings as FID features: images [B, 3, H, W] float in [0, 1] -> [B, P]."""

    def __init__(self, scorer: ClipScorer) -> None:
        super().__init__()
        self.scorer = scorer
        self.num_features = int(scorer.model.config.projection_dim)

    def forward(self, images: Tensor) -> Tensor:
        return self.scorer.image_embeddings(images)


def _read_inception_state(path: Path) -> dict[str, Tensor]:
    """The Inception state dict from ``.safetensors`` or the published ``.pth`` (tensors only)."""
    if not path.is_file():
        raise FileNotFoundError(f"--inception-weights {str(path)!r} does not exist; {_FID_WEIGHTS_FIX}; {_FID_OTHER}")
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    try:  # the published file is a torch state dict; weights_only refuses anything but tensors
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing here
        raise ValueError(f"--inception-weights {str(path)!r} is not a readable torch state dict ({str(err)[:300]}); {_FID_WEIGHTS_FIX}") from err
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"--inception-weights {str(path)!r} does not hold a state dict of tensors; {_FID_WEIGHTS_FIX}")
    return state


def has_torch_fidelity() -> bool:
    """Whether torch-fidelity (the Inception-v3 port torchmetrics' FID uses) is importable."""
    return importlib.util.find_spec("torch_fidelity") is not None


def load_inception(weights: PathLike | None = None) -> FidFeatures:
    """The FID Inception-v3 (torch-fidelity's TF port, 2048-d pool features) from torchmetrics.

    Args:
        weights: the converted TF weights (``pt_inception-2015-12-05-6726825d.pth`` or
            ``weights-inception-2015-12-05-6726825d.pth``, or a ``.safetensors`` copy). The file
            is read here with tensors-only loading and handed to torch-fidelity in memory.
            None lets torch-fidelity download it (network) or take it from the torch hub cache.

    Raises ``ImportError`` without torch-fidelity, ``FileNotFoundError`` / ``ValueError`` for a
    missing or unreadable file, ``RuntimeError`` when the download fails; all say how to fix it.
    """
    _import_torchmetrics()
    if not has_torch_fidelity():
        raise ImportError(f"FID with the Inception network needs torch-fidelity, which is not installed: {_FID_FIX}")
    from torchmetrics.image.fid import FrechetInceptionDistance

    source: Any = None
    if weights is not None:
        state = _read_inception_state(Path(weights))
        source = io.BytesIO()
        torch.save(state, source)
        source.seek(0)
    try:
        metric = FrechetInceptionDistance(feature=INCEPTION_FEATURE_DIM, normalize=False, feature_extractor_weights_path=source)
    except (RuntimeError, KeyError) as err:
        raise ValueError(f"--inception-weights {str(weights)!r} does not fit torch-fidelity's Inception-v3 ({str(err)[:300]}); {_FID_WEIGHTS_FIX}") from err
    except Exception as err:  # noqa: BLE001 - urllib / hub errors vary by version
        if weights is not None:
            raise
        raise RuntimeError(f"torch-fidelity could not download the Inception weights ({type(err).__name__}: {err}); {_FID_WEIGHTS_FIX}; {_FID_OTHER}") from err
    module = metric.inception
    module.num_features = INCEPTION_FEATURE_DIM
    return FidFeatures(module=module, name=f"inception-v3-{INCEPTION_FEATURE_DIM}", input="uint8", dim=INCEPTION_FEATURE_DIM)


def load_feature_callable(spec: str) -> nn.Module:
    """Build a user feature extractor from ``'package.module:function'`` or ``'path/file.py:function'``.

    ``function()`` (no arguments) must return an ``nn.Module`` mapping images [B, 3, H, W]
    float in [0, 1] to features [B, D]; an attribute ``num_features`` (int) saves a probe pass.
    """
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ValueError(f"--fid-features {spec!r} is not a known extractor; {_FID_SPEC}")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise FileNotFoundError(f"--fid-features file {target!r} does not exist")
            module_spec = importlib.util.spec_from_file_location(f"scfm_fid_features_{path.stem}", path)
            assert module_spec is not None and module_spec.loader is not None
            mod = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(mod)
        else:
            mod = importlib.import_module(target)
        factory = getattr(mod, attr)
    except (ImportError, AttributeError, FileNotFoundError) as err:
        raise ValueError(f"--fid-features {spec!r} cannot be loaded ({err}); {_FID_SPEC}") from err
    module = factory() if not isinstance(factory, nn.Module) else factory
    if not isinstance(module, nn.Module):
        raise ValueError(f"--fid-features {spec!r} returned a {type(module).__name__}, not an nn.Module; {_FID_SPEC}")
    return module.eval()


def resolve_fid_features(
    fid_features: str | nn.Module | FidFeatures | None,
    inception_weights: PathLike | None = None,
    clip: ClipScorer | None = None,
) -> FidFeatures | None:
    """Turn ``--fid-features`` into a :class:`FidFeatures` (or None for 'none'), loading weights now.

    ``'inception'`` (default): :func:`load_inception` (``inception_weights``); ``'clip'``: the
    image embeddings of ``clip`` (FD-CLIP: not comparable with published FIDs); ``'module:fn'``
    / ``'file.py:fn'``: :func:`load_feature_callable`; an ``nn.Module``: used as is (float input).
    """
    if fid_features is None or isinstance(fid_features, FidFeatures):
        return fid_features
    if isinstance(fid_features, nn.Module):
        dim = getattr(fid_features, "num_features", None)
        return FidFeatures(module=fid_features.eval(), name=type(fid_features).__name__, dim=int(dim) if dim is not None else None)
    spec = str(fid_features)
    if spec == "none":
        return None
    if spec == "inception":
        return load_inception(inception_weights)
    if spec == "clip":
        if clip is None:
            raise ValueError(f"--fid-features clip needs a CLIP model, but --clip is 'none'; give --clip a CLIP model, or {_FID_SPEC}")
        module = _ClipImageFeatures(clip)
        return FidFeatures(module=module, name=f"clip:{clip.name}", dim=module.num_features)
    module = load_feature_callable(spec)
    dim = getattr(module, "num_features", None)
    return FidFeatures(module=module, name=spec, dim=int(dim) if dim is not None else None)


def load_scorers(
    clip: str | PathLike | ClipScorer | None,
    fid_features: str | nn.Module | FidFeatures | None,
    inception_weights: PathLike | None = None,
    device: str | torch.device = "cpu",
    local_files_only: bool | None = None,
) -> tuple[ClipScorer | None, FidFeatures | None]:
    """Load the CLIP scorer and the FID features (see :func:`evaluate_text_to_image`), cheapest checks first.

    The FID features are resolved before CLIP (a missing torch-fidelity fails in milliseconds,
    CLIP ViT-L/14 takes seconds to load) unless they are the CLIP embeddings themselves.
    """
    needs_clip = isinstance(fid_features, str) and fid_features == "clip"
    features = None if needs_clip else resolve_fid_features(fid_features, inception_weights)
    scorer = clip if isinstance(clip, ClipScorer) or clip is None else ClipScorer(clip, device, local_files_only)
    if needs_clip:
        features = resolve_fid_features(fid_features, inception_weights, scorer)
    return scorer, features


class FrechetScorer:
    """FID (torchmetrics) of image sets against one fixed "real" set, features cached.

    ``add_real(images)`` builds the fixed set once; then for each compared set ``reset()``,
    ``add(images)`` per batch and ``compute()``. Images are [B, 3, H, W] float in [0, 1].
    """

    def __init__(self, features: FidFeatures, device: str | torch.device = "cpu") -> None:
        _import_torchmetrics()
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.features = features
        self.device = torch.device(device)
        self.metric = FrechetInceptionDistance(
            feature=features.module, normalize=features.input == "float", reset_real_features=False
        ).to(self.device)
        self.dim = int(self.metric.real_features_sum.shape[0])

    def _prepare(self, images: Tensor) -> Tensor:
        images = check_images(images)
        return (to_uint8(images) if self.features.input == "uint8" else images).to(self.device)

    @torch.inference_mode()
    def add_real(self, images: Tensor) -> None:
        """Add images [B, 3, H, W] in [0, 1] to the fixed reference set."""
        self.metric.update(self._prepare(images), real=True)

    @torch.inference_mode()
    def add(self, images: Tensor) -> None:
        """Add images [B, 3, H, W] in [0, 1] to the set being compared."""
        self.metric.update(self._prepare(images), real=False)

    def reset(self) -> None:
        """Forget the compared set; the reference set stays."""
        self.metric.reset()

    @property
    def n_real(self) -> int:
        return int(self.metric.real_features_num_samples)

    @property
    def n(self) -> int:
        return int(self.metric.fake_features_num_samples)

    def compute(self) -> float:
        """FID (>= 0 up to round-off) between the two sets; both need at least 2 images."""
        if self.n_real < 2 or self.n < 2:
            raise ValueError(f"FID needs at least 2 images per set; got {self.n_real} reference and {self.n} compared")
        return float(self.metric.compute())


def fid_warning(n: int, dim: int, what: str) -> str | None:
    """The poor-conditioning warning text when ``n`` samples face ``dim``-wide features, else None."""
    if n >= dim:
        return None
    return (
        f"{what}: n={n} samples < feature dim {dim}: the covariances are rank-deficient and the FID is biased "
        f"upward; compare FIDs only at equal n and features, and use n >= {dim} samples (Inception: thousands "
        "of prompts) for numbers comparable with published ones"
    )


def frechet_distance_images(
    images_a: Tensor,
    images_b: Tensor,
    feature: str | nn.Module | FidFeatures = "inception",
    inception_weights: PathLike | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> float:
    """FID between image sets a [N, 3, H, W] and b [M, 3, H', W'] in [0, 1] (N, M >= 2).

    ``feature``: ``'inception'`` (torch-fidelity, weights from ``inception_weights``), an
    ``nn.Module`` mapping float images in [0, 1] to [B, D], or a :class:`FidFeatures`.
    Warns when min(N, M) is below the feature width (see module docstring).
    """
    for name, images in (("images_a", images_a), ("images_b", images_b)):
        check_images(images, name)
        if images.shape[0] < 2:
            raise ValueError(f"{name} holds {images.shape[0]} image(s); FID needs at least 2 per set")
    features = resolve_fid_features(feature, inception_weights)
    assert features is not None
    scorer = FrechetScorer(features, device)
    for start in range(0, images_a.shape[0], batch_size):
        scorer.add_real(images_a[start : start + batch_size])
    for start in range(0, images_b.shape[0], batch_size):
        scorer.add(images_b[start : start + batch_size])
    message = fid_warning(min(scorer.n_real, scorer.n), scorer.dim, "frechet_distance_images")
    if message:
        warnings.warn(message, stacklevel=2)
    return scorer.compute()


# ---------------------------------------------------------------------------- prompts and images
def load_prompts(path: PathLike, limit: int | None = None) -> list[str]:
    """Prompts from a ``.txt`` file (one per non-blank line) or ``.jsonl`` (objects with ``"prompt"``).

    In ``.jsonl`` the keys ``"caption"`` and ``"text"`` are accepted too. ``limit`` keeps the
    first ``limit`` prompts. Raises ``ValueError`` naming the file and line for bad content.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--prompts {str(path)!r} does not exist; pass a .txt (one prompt per line) or .jsonl file")
    if limit is not None and limit < 1:
        raise ValueError(f"--max-prompts {limit} must be >= 1")
    lines = path.read_text(encoding="utf-8").splitlines()
    prompts: list[str] = []
    if path.suffix == ".jsonl":
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{i} is not valid JSON ({err})") from err
            text = next((obj[k] for k in ("prompt", "caption", "text") if isinstance(obj, dict) and k in obj), None)
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{path}:{i} needs a non-empty string field 'prompt' (or 'caption' / 'text'), got {line[:80]!r}")
            prompts.append(text.strip())
    elif path.suffix == ".txt":
        prompts = [line.strip() for line in lines if line.strip()]
    else:
        raise ValueError(f"--prompts {str(path)!r} has suffix {path.suffix!r}; use .txt (one prompt per line) or .jsonl")
    if not prompts:
        raise ValueError(f"--prompts {str(path)!r} holds no prompts")
    return prompts[:limit] if limit is not None else prompts


def list_reference_images(folder: PathLike) -> list[Path]:
    """Sorted PNG/JPG files in ``folder`` (not recursive); each header is checked, no pixels decoded."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--reference {str(folder)!r} is not a folder; pass a folder of .png / .jpg images")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise ValueError(f"--reference {str(folder)!r} holds {len(files)} .png/.jpg image(s); FID needs at least 2")
    for p in files:
        try:
            with Image.open(p) as im:
                im.verify()
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"reference image {str(p)!r} cannot be read ({err}); remove or replace it") from err
    return files


def _load_image(path: Path, size: tuple[int, int]) -> Tensor:
    """One image as [3, H, W] float in [0, 1]: resized (bicubic) to cover ``size``, center-cropped."""
    from PIL import Image

    h, w = size
    with Image.open(path) as im:
        im = im.convert("RGB")
        scale = max(h / im.height, w / im.width)
        rh, rw = max(h, round(im.height * scale)), max(w, round(im.width * scale))
        im = im.resize((rw, rh), Image.Resampling.BICUBIC)
        top, left = (rh - h) // 2, (rw - w) // 2
        im = im.crop((left, top, left + w, top + h))
        arr = np.asarray(im, dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0


def _as_size(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else size
    if h < 1 or w < 1:
        raise ValueError(f"size={size} must be positive (H, W)")
    return int(h), int(w)


def iter_reference_folder(folder: PathLike, size: int | tuple[int, int], batch_size: int = 32) -> Iterator[Tensor]:
    """Yield the folder's images in batches [b, 3, H, W] float in [0, 1] (see :func:`load_reference_folder`)."""
    files = list_reference_images(folder)
    hw = _as_size(size)
    for start in range(0, len(files), batch_size):
        yield torch.stack([_load_image(p, hw) for p in files[start : start + batch_size]])


def load_reference_folder(folder: PathLike, size: int | tuple[int, int]) -> Tensor:
    """All .png/.jpg images of ``folder`` (sorted by name) as [N, 3, H, W] float in [0, 1].

    Each image is converted to RGB, resized (bicubic) so that it covers ``size`` (an int for
    square, or (H, W)) and center-cropped to it. Needs at least 2 images.
    """
    return torch.cat(list(iter_reference_folder(folder, size)))


# ------------------------------------------------------------------------------------ figures
def _fit(images: Tensor, max_side: int, min_side: int = 96) -> Tensor:
    """Resize images [B, 3, H, W] in [0, 1] for display: shrink (area filter) to a longer side
    <= ``max_side``, or enlarge tiny ones by a whole factor (nearest) to >= ``min_side``."""
    h, w = images.shape[-2:]
    if max(h, w) < min_side:
        factor = math.ceil(min_side / max(h, w))
        return images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    factor = max(h, w) / max_side
    if factor <= 1:
        return images
    size = (max(1, round(h / factor)), max(1, round(w / factor)))
    return torch.nn.functional.interpolate(images, size=size, mode="area")


def save_labelled_rows(rows: Sequence[tuple[str, Tensor]], path: PathLike, titles: Sequence[str] = (), max_side: int = 192) -> Path:
    """PNG of labelled image rows: ``(label, images [K, 3, H, W] in [0, 1])`` per row, at 1:1 pixels.

    Images are shrunk so their longer side is at most ``max_side`` pixels (tiny ones enlarged);
    ``titles`` (e.g. the prompts, cut to the column width) head the columns. Written
    atomically; returns the path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not rows:
        raise ValueError("rows is empty; pass a list of (label, images [K, 3, H, W])")
    shrunk = [(label, _fit(check_images(images, f"images of row {label!r}").cpu(), max_side)) for label, images in rows]
    h = max(int(x.shape[-2]) for _, x in shrunk)
    w = max(int(x.shape[-1]) for _, x in shrunk)
    cols = max(int(x.shape[0]) for _, x in shrunk)
    pad = 4
    canvas = np.ones((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, 3), dtype=np.float32)
    for r, (_, images) in enumerate(shrunk):
        for c, img in enumerate(images):
            top, left = pad + r * (h + pad), pad + c * (w + pad)
            canvas[top : top + img.shape[-2], left : left + img.shape[-1]] = img.permute(1, 2, 0).numpy()
    dpi, label_px, title_px = 100, 150, 24 if titles else 0
    fig = Figure(figsize=((canvas.shape[1] + label_px) / dpi, (canvas.shape[0] + title_px) / dpi), dpi=dpi)
    ax = fig.add_axes((label_px / (canvas.shape[1] + label_px), 0, canvas.shape[1] / (canvas.shape[1] + label_px), canvas.shape[0] / (canvas.shape[0] + title_px)))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()
    for r, (label, _) in enumerate(rows):
        ax.text(-8, pad + r * (h + pad) + h / 2, label, ha="right", va="center", fontsize=9)
    for c, title in enumerate(list(titles)[:cols]):
        chars = max(4, (w + pad) // 5)  # about 5 px per character at font size 7
        text = title if len(title) <= chars else title[: chars - 3] + "..."
        ax.text(pad + c * (w + pad) + w / 2, -4, text, ha="center", va="bottom", fontsize=7)
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return atomic_write_bytes(path, buf.getvalue())


_METRIC_LABELS = {"clip": "CLIP score (higher is better)", "dfid": "dFID vs teacher (lower is better)", "fid": "FID vs reference (lower is better)"}


def plot_t2i_metrics(rows: Sequence[dict[str, Any]], path: PathLike, teacher_steps: int) -> Path:
    """PNG with one panel per metric (clip, dfid, fid) against NFE: a line per model, the reference teacher dashed.

    ``rows`` are :func:`evaluate_text_to_image` rows; metrics that are None everywhere get no panel.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = [m for m in ("clip", "dfid", "fid") if any(r.get(m) is not None for r in rows)]
    if not metrics:
        raise ValueError("no row has a clip, dfid or fid value; nothing to plot")
    fig = Figure(figsize=(4.2 * len(metrics), 3.6))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        lines: dict[str, list[tuple[int, float]]] = {}
        for row in rows:
            if row.get(metric) is None:
                continue
            if row["model"] == "teacher" and row["steps"] == teacher_steps:
                ax.axhline(row[metric], color="gray", linestyle="--", label=f"teacher {teacher_steps} steps")
                continue
            lines.setdefault(str(row["model"]), []).append((int(row["nfe"]), float(row[metric])))
        for model, pts in sorted(lines.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=model)
        nfes = sorted({p[0] for pts in lines.values() for p in pts})
        if nfes:
            ax.set_xscale("log", base=2)
            ax.set_xticks(nfes)
            ax.set_xticklabels([str(n) for n in nfes])
        ax.set_xlabel("NFE per image")
        ax.set_title(_METRIC_LABELS[metric], fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return atomic_write_bytes(path, buf.getvalue())


# ------------------------------------------------------------------------------------- driver
@dataclass
class _SetResult:
    """Scores of one generated set (one model at one step count)."""

    clip: float | None
    dfid: float | None
    fid: float | None
    n: int
    seconds: float
    grid: Tensor
    size: tuple[int, int] = (0, 0)


def check_eval_plan(prompts: Sequence[str], steps_list: Sequence[int], teacher_steps: int, batch_size: int, grid_prompts: int, need_two: bool) -> None:
    """Raise ``ValueError`` naming the flag for an evaluation plan that cannot run (checked before any work)."""
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a non-empty list of strings")
    if need_two and len(prompts) < 2:
        raise ValueError(f"FID / dFID need at least 2 prompts (samples per set), got {len(prompts)}; add prompts or pass --fid-features none")
    if not steps_list or any(int(s) < 1 for s in steps_list):
        raise ValueError(f"--steps {list(steps_list)} must be a non-empty list of step counts >= 1")
    if teacher_steps < 1:
        raise ValueError(f"--teacher-steps {teacher_steps} must be >= 1")
    if batch_size < 1:
        raise ValueError(f"--batch-size {batch_size} must be >= 1")
    if grid_prompts < 0:
        raise ValueError(f"--grid-prompts {grid_prompts} must be >= 0")


def _run_set(
    generate: GenerateFn,
    label: str,
    prompts: Sequence[str],
    steps: int,
    seed: int,
    batch_size: int,
    clip: ClipScorer | None,
    dfid: FrechetScorer | None,
    fid: FrechetScorer | None,
    grid_prompts: int,
    progress: bool,
    as_dfid_reference: bool = False,
    on_first_batch: Callable[[Tensor], None] | None = None,
) -> _SetResult:
    """Generate ``prompts`` in batches (the batch from prompt i on gets seed ``seed + i``) into the scorers."""
    from tqdm.auto import tqdm

    for scorer in (clip, fid):
        if scorer is not None:
            scorer.reset()
    if dfid is not None and not as_dfid_reference:
        dfid.reset()
    grid: list[Tensor] = []
    size = (0, 0)
    seconds = 0.0
    with tqdm(total=len(prompts), desc=label, unit="prompt", disable=not progress) as bar:
        for k, i in enumerate(range(0, len(prompts), batch_size)):
            batch = list(prompts[i : i + batch_size])
            start = time.perf_counter()
            images = check_images(generate(batch, steps, seed + i), f"{label} images", batch=len(batch)).cpu()
            seconds += time.perf_counter() - start  # generation only (.cpu() waits for the device)
            if k == 0:
                size = (int(images.shape[-2]), int(images.shape[-1]))
                if on_first_batch is not None:
                    on_first_batch(images)
            if clip is not None:
                clip.update(images, batch)
            if dfid is not None:
                (dfid.add_real if as_dfid_reference else dfid.add)(images)
            if fid is not None:
                fid.add(images)
            if sum(g.shape[0] for g in grid) < grid_prompts:
                grid.append(images[: grid_prompts - sum(g.shape[0] for g in grid)])
            bar.update(len(batch))
    return _SetResult(
        clip=clip.compute() if clip is not None else None,
        dfid=dfid.compute() if dfid is not None and not as_dfid_reference else None,
        fid=fid.compute() if fid is not None else None,
        n=len(prompts),
        seconds=seconds,
        grid=torch.cat(grid) if grid else torch.zeros(0, 3, *size),
        size=size,
    )


def _row(model: str, steps: int, nfe_per_step: int, result: _SetResult) -> dict[str, Any]:
    def r(x: float | None, floor: float | None = None) -> float | None:
        if x is None:
            return None
        return round(x, 4) if floor is None else max(floor, round(x, 4))  # FID < 0 is round-off

    return {
        "model": model, "steps": steps, "nfe": steps * nfe_per_step, "clip": r(result.clip), "dfid": r(result.dfid, 0.0),
        "fid": r(result.fid, 0.0), "n": result.n, "sec_per_image": round(result.seconds / max(1, result.n), 4),
    }


def _small_n_warnings(n_prompts: int, n_reference: int, dfid: FrechetScorer | None, fid: FrechetScorer | None) -> list[str]:
    """Issue (and return) the FID conditioning warnings of :func:`fid_warning` for this plan."""
    messages = []
    if dfid is not None:
        messages.append(fid_warning(n_prompts, dfid.dim, f"dFID ({dfid.features.name})"))
    if fid is not None:
        messages.append(fid_warning(min(n_prompts, n_reference), fid.dim, f"FID vs reference ({fid.features.name})"))
    notes = [m for m in messages if m]
    for message in notes:
        warnings.warn(message, stacklevel=3)
    return notes


@dataclass
class _Report:
    """The json of :func:`evaluate_text_to_image`, rewritten atomically after every row."""

    out: Path
    notes: list[str]
    config: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    grids: dict[int, Path] = field(default_factory=dict)
    plot: Path | None = None
    start: float = field(default_factory=time.perf_counter)

    def add(self, model: str, steps: int, nfe_per_step: int, result: _SetResult) -> _SetResult:
        """Append the row of ``result`` and write the json (``complete`` false); returns ``result``."""
        self.rows.append(_row(model, steps, nfe_per_step, result))
        self.write(complete=False)
        return result

    def write(self, complete: bool) -> dict[str, Any]:
        content = {
            "rows": self.rows,
            "complete": complete,
            "config": self.config,
            "warnings": self.notes,
            "files": {"grids": {str(n): p.name for n, p in self.grids.items()}, "plot": self.plot.name if self.plot else None},
            "seconds": round(time.perf_counter() - self.start, 1),
        }
        atomic_write_json(self.out / "t2i_metrics.json", content)
        return content


def evaluate_text_to_image(
    teacher_generate: GenerateFn,
    student_generate: GenerateFn,
    prompts: Sequence[str],
    steps_list: Sequence[int],
    out_dir: PathLike,
    teacher_steps: int = 32,
    clip: str | PathLike | ClipScorer | None = DEFAULT_CLIP,
    fid_features: str | nn.Module | FidFeatures | None = "inception",
    inception_weights: PathLike | None = None,
    reference: PathLike | None = None,
    batch_size: int = 4,
    seed: int = 0,
    teacher_baseline: bool = True,
    grid_prompts: int = 4,
    teacher_nfe_per_step: int = 1,
    student_nfe_per_step: int = 1,
    device: str | torch.device = "cpu",
    progress: bool = True,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score a few-step student against its teacher on ``prompts``; write metrics, grids and a plot.

    Args:
        teacher_generate, student_generate: ``generate(prompts, steps, seed) -> images
            [len(prompts), 3, H, W] float in [0, 1]``; the same seed must give the same noise
            in both, so that paired samples are comparable.
        prompts: the evaluation prompts; every set generates each once. The batch starting at
            prompt i gets seed ``seed + i``: a callable that seeds its j-th prompt with
            ``seed + j`` gives prompt i the seed ``seed + i`` whatever the batch size.
        steps_list: student step counts, e.g. (1, 2, 4, 8).
        out_dir: receives ``t2i_metrics.json``, ``t2i_grid_steps{n}.png`` per n and
            ``t2i_metrics_vs_steps.png``.
        teacher_steps: step count of the teacher reference samples (dFID's reference).
        clip: CLIP folder / hub id / :class:`ClipScorer`, or None to skip CLIP scores.
        fid_features: ``'inception'``, ``'clip'``, ``'module:function'``, an ``nn.Module`` or
            :class:`FidFeatures`; None skips dFID and FID.
        inception_weights: Inception weights file for ``'inception'`` (None: torch-fidelity's download).
        reference: folder of real .png/.jpg images for FID (resized and center-cropped to the
            generated size); None skips the column.
        batch_size: prompts per generate call.
        teacher_baseline: also score the teacher at each student step count.
        grid_prompts: images per row of the comparison grids.
        teacher_nfe_per_step, student_nfe_per_step: network calls per step (2 with runtime CFG).
        device: where CLIP and the FID features run.
        config: extra fields recorded under ``"config"`` in the json.

    Returns the json content: ``rows`` (``{"model", "steps", "nfe", "clip", "dfid", "fid", "n",
    "sec_per_image"}``, model "teacher" or "student"; ``sec_per_image`` counts generation
    only), ``complete``, ``config``, ``warnings`` and ``files``. The json is rewritten after
    every row (``complete`` false until the end), so an interrupted run keeps its rows.
    Everything that can fail (models, weights, prompts, reference folder) is checked, and the
    small-n FID warnings are issued, before the first image is generated.
    """
    steps_list = [int(s) for s in steps_list]
    check_eval_plan(prompts, steps_list, teacher_steps, batch_size, grid_prompts, need_two=fid_features is not None)
    ref_files = list_reference_images(reference) if reference is not None else []
    if reference is not None and fid_features is None:
        raise ValueError("--reference needs FID features, but --fid-features is 'none'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scorer, features = load_scorers(clip, fid_features, inception_weights, device)
    dfid = FrechetScorer(features, device) if features is not None else None
    fid = FrechetScorer(features, device) if features is not None and reference is not None else None
    report = _Report(out, notes=_small_n_warnings(len(prompts), len(ref_files), dfid, fid), config={
        "teacher_steps": teacher_steps, "steps": steps_list, "n_prompts": len(prompts), "batch_size": batch_size, "seed": seed,
        "clip_model": scorer.name if scorer is not None else None, "fid_features": features.name if features is not None else None,
        "fid_feature_dim": dfid.dim if dfid is not None else None, "reference": str(reference) if reference is not None else None,
        "n_reference": len(ref_files) if reference is not None else None, **(config or {}),
    })

    def load_reference(first: Tensor) -> None:  # FID's real side, at the generated size
        if fid is not None and reference is not None:
            for images in iter_reference_folder(reference, (first.shape[-2], first.shape[-1]), batch_size=max(batch_size, 16)):
                fid.add_real(images)

    kw = dict(prompts=prompts, seed=seed, batch_size=batch_size, clip=scorer, dfid=dfid, fid=fid, grid_prompts=grid_prompts, progress=progress)
    ref = _run_set(teacher_generate, f"teacher {teacher_steps} steps", steps=teacher_steps, as_dfid_reference=True, on_first_batch=load_reference, **kw)
    report.config["image_size"] = list(ref.size)
    report.add("teacher", teacher_steps, teacher_nfe_per_step, ref)
    for n in steps_list:
        results = {}
        if teacher_baseline:
            results["teacher"] = report.add("teacher", n, teacher_nfe_per_step, _run_set(teacher_generate, f"teacher {n} steps", steps=n, **kw))
        results["student"] = report.add("student", n, student_nfe_per_step, _run_set(student_generate, f"student {n} steps", steps=n, **kw))
        if grid_prompts > 0:
            grid_rows = [(f"teacher {teacher_steps} steps", ref.grid), *((f"{model} {n} steps", r.grid) for model, r in results.items())]
            report.grids[n] = save_labelled_rows(grid_rows, out / f"t2i_grid_steps{n}.png", titles=list(prompts[:grid_prompts]))
    if scorer is not None or features is not None:
        report.plot = plot_t2i_metrics(report.rows, out / "t2i_metrics_vs_steps.png", teacher_steps)
    return report.write(complete=True)

