"""Reading a finished run folder (``output_dir`` of ``scfm distill``): its config and its distilled model.

A run folder holds ``config.yaml``, ``checkpoints/``, ``metrics.jsonl`` and, once finished, what
:meth:`scfm.distilled.DistilledModel.save` writes: ``scfm_config.json`` (with the resolved
config), ``lora.safetensors`` (``final_weights``) and the named copies ``ema_slow``,
``ema_fast`` and ``student``.
"""

from __future__ import annotations

import os
from pathlib import Path

from scfm.distilled import CONFIG_FILE, LORA_FILE, DistilledModel, read_saved_config
from scfm.train.config import FINAL_WEIGHTS, DistillConfig
from scfm.train.sources import build_teacher, is_diffusers_teacher


def read_run_config(run_dir: str | os.PathLike, diffusers_only: bool = False) -> DistillConfig:
    """The run's config; raises when the run is unfinished (or, with ``diffusers_only``, not a diffusers run)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file() or not (run_dir / LORA_FILE).is_file():
        raise FileNotFoundError(
            f"{str(run_dir)!r} has no {CONFIG_FILE} / {LORA_FILE}: pass the output_dir of a finished scfm distill run "
            "(a run stopped early writes them when resumed to completion)"
        )
    config = DistillConfig.from_dict(read_saved_config(run_dir)["config"])
    if diffusers_only and not is_diffusers_teacher(config):
        raise ValueError(
            f"run {str(run_dir)!r} distilled teacher={config.teacher!r}; this command takes runs of diffusers models "
            "(teacher: diffusers:<model>) only"
        )
    return config


def load_run(
    run_dir: str | os.PathLike, weights: str = "slow_ema", model_dtype: str | None = None
) -> tuple[DistilledModel, DistillConfig]:
    """(the run's distilled model with LoRA copy ``weights`` loaded, on the CPU; the run's config).

    ``model_dtype`` overrides the dtype the frozen diffusers transformer is loaded in.
    """
    if weights not in FINAL_WEIGHTS:
        raise ValueError(f"weights={weights!r} must be one of {FINAL_WEIGHTS}")
    config = read_run_config(run_dir)
    if model_dtype is not None:
        config.model_dtype = model_dtype
    student = DistilledModel.load(run_dir, build_teacher(config))
    if weights in student.weights:
        student.use_weights(weights)
    elif weights != student.final_weights:
        have = sorted(student.weights) or [student.final_weights]
        raise ValueError(f"run {str(run_dir)!r} has no {weights} LoRA file; available: {have}")
    return student, config
