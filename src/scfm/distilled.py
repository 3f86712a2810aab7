"""The distilled model: one base model with LoRA layers, an ``nn.Module``, saved and loaded as a run folder.

A folder written by :meth:`DistilledModel.save` holds ``lora.safetensors`` (the LoRA the model
carries), ``student.safetensors`` / ``ema_fast.safetensors`` / ``ema_slow.safetensors`` (the
named LoRA copies, when known) and ``scfm_config.json`` (the LoRA layout, the training config
as a plain mapping, and the LoRA scale per step count).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scfm.fileio import atomic_save_safetensors, atomic_write_json, load_safetensors
from scfm.objective.step_scale import StepScale
from scfm.weights.lora import LoraSpec, attach_lora, fuse_lora, has_lora, load_lora_state_dict, lora_state_dict

LORA_FILE = "lora.safetensors"
STUDENT_FILE = "student.safetensors"
EMA_FAST_FILE = "ema_fast.safetensors"
EMA_SLOW_FILE = "ema_slow.safetensors"
CONFIG_FILE = "scfm_config.json"
WEIGHT_FILES = {"student": STUDENT_FILE, "fast_ema": EMA_FAST_FILE, "slow_ema": EMA_SLOW_FILE}
"""The named LoRA copies a run keeps, and their file names."""


class DistilledModel(nn.Module):
    """The student: ``model`` is the teacher module with LoRA layers carrying the final weights.

    It is an ``nn.Module`` like the user's own: ``v = student(x, t, **cond)`` (the teacher's
    signature), ``.eval()``, ``.to()``, ``state_dict()``, ``torch.compile`` and any sampler
    work on it; :func:`scfm.sample` also uses its calibrated LoRA scales.

    Attributes:
        model: the base module with LoRA layers (frozen base weights, one copy).
        lora_spec: where and how big the LoRA is (needed to attach it to a fresh base).
        config: the training config as a plain JSON-able mapping (empty when unknown).
        final_weights: which named copy the LoRA carries ('student', 'fast_ema', 'slow_ema').
        weights: named LoRA copies {name: {tensor name: tensor}}, when known.
        history: the logged training records.
        lora_scales: {steps: LoRA scale} that :func:`scfm.sample` uses when no scale is
            given (set by calibration; empty: scale 1 everywhere).
    """

    def __init__(
        self,
        model: nn.Module,
        lora_spec: LoraSpec,
        *,
        config: Mapping[str, Any] | None = None,
        final_weights: str = "slow_ema",
        weights: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
        history: list[dict[str, Any]] | None = None,
        lora_scales: Mapping[int, float] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.lora_spec = lora_spec
        self.config = dict(config or {})
        self.final_weights = final_weights
        self.weights = {name: dict(tensors) for name, tensors in (weights or {}).items()}
        self.history = list(history or [])
        self.lora_scales = {int(n): float(s) for n, s in (lora_scales or {}).items()}

    def scale_for_steps(self, steps: int) -> float | None:
        """The LoRA scale an ``steps``-step sampler uses by default: the calibrated one (``lora_scales``),
        else the trained step scale ``(ref_steps / steps) ** power`` (config ``step_scale``), else None (1)."""
        if steps in self.lora_scales:
            return self.lora_scales[steps]
        return self.trained_scale(steps) if self.step_scale.enabled else None

    def trained_scale(self, steps: int) -> float:
        """The LoRA scale the run trained ``steps``-step jumps at: ``step_scale``'s formula, 1 without one."""
        return float(self.step_scale.for_steps(steps))

    @property
    def step_scale(self) -> StepScale:
        """The LoRA strength the run trained each step count at (power 0: one strength for every jump)."""
        return step_scale_of(self.config)

    def forward(self, x: torch.Tensor, t: torch.Tensor, **cond: Any) -> torch.Tensor:
        """The student's velocity ``v`` [B, ...] at ``x`` [B, ...], ``t`` [B] in [0, 1] (t = 1 is noise)."""
        return self.model(x, t, **cond)

    def student_pass(self) -> AbstractContextManager:
        """The context the student is trained and sampled in (an adapter's, e.g. baked CFG; else a no-op)."""
        enter = getattr(self.model, "student_pass", None)
        return enter() if callable(enter) else nullcontext()

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], *args: Any, **kwargs: Any) -> DistilledModel:
        """``.to()``, ``.cuda()``, ``.half()``, ... also move the named LoRA copies."""
        super()._apply(fn, *args, **kwargs)
        self.weights = {name: {k: fn(v) for k, v in tensors.items()} for name, tensors in self.weights.items()}
        return self

    def use_weights(self, which: str) -> None:
        """Load the named LoRA copy ('student', 'fast_ema' or 'slow_ema') into the model."""
        if which not in self.weights:
            raise ValueError(f"weights={which!r} not available; have {sorted(self.weights)}")
        load_lora_state_dict(self.model, self.weights[which])

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``lora.safetensors`` (the final LoRA), the other copies and ``scfm_config.json``."""
        directory = Path(directory)
        meta = {"format": "scfm-lora", "final_weights": self.final_weights}
        atomic_save_safetensors(lora_state_dict(self.model), directory / LORA_FILE, metadata=meta)
        for which, name in WEIGHT_FILES.items():
            if which in self.weights:
                atomic_save_safetensors(self.weights[which], directory / name, metadata={"format": "scfm-lora"})
        saved = {
            "config": self.config,
            "lora": asdict(self.lora_spec),
            "final_weights": self.final_weights,
            "lora_scales": {str(n): s for n, s in sorted(self.lora_scales.items())},
        }
        atomic_write_json(directory / CONFIG_FILE, saved)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, teacher: nn.Module) -> DistilledModel:
        """Attach the saved LoRA to ``teacher`` (modified in place) and return the student, in eval mode."""
        directory = Path(directory)
        saved = read_saved_config(directory)
        try:
            spec = _lora_spec(saved)
            scales = {int(n): float(s) for n, s in saved.get("lora_scales", {}).items()}
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(f"{str(directory / CONFIG_FILE)!r} is corrupt ({err}); re-save the model") from err
        if has_lora(teacher):
            raise ValueError("teacher already has LoRA layers; pass a fresh base model to DistilledModel.load")
        attach_lora(teacher, spec)
        load_lora_state_dict(teacher, load_safetensors(directory / LORA_FILE))
        weights = {w: load_safetensors(directory / f) for w, f in WEIGHT_FILES.items() if (directory / f).is_file()}
        config = saved.get("config", {})
        final = saved.get("final_weights", config.get("final_weights", "slow_ema"))
        student = cls(teacher, spec, config=config, final_weights=final, weights=weights, lora_scales=scales)
        device = next(teacher.parameters()).device
        return student.to(device).eval()

    def fuse(self, scale: float = 1.0) -> nn.Module:
        """Merge ``scale`` x the LoRA into the base weights; returns the plain base module (no peft layers)."""
        return fuse_lora(self.model, scale)


def step_scale_of(config: Mapping[str, Any]) -> StepScale:
    """The :class:`StepScale` of a training config mapping (the default, off, when it has none)."""
    values = config.get("step_scale") or {}
    return StepScale(**{k: float(v) for k, v in values.items() if k in ("power", "ref_steps")})


def read_saved_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``scfm_config.json`` of a folder written by :meth:`DistilledModel.save`."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is missing: {str(directory)!r} is not a folder written by DistilledModel.save"
        )
    try:
        saved = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{str(path)!r} is corrupt ({err}); re-save the model") from err
    if not isinstance(saved, dict):
        raise ValueError(f"{str(path)!r} is corrupt (not a JSON object); re-save the model")
    return saved


def _lora_spec(saved: Mapping[str, Any]) -> LoraSpec:
    """The LoRA layout: the ``lora`` entry, or (folders saved before it existed) the flat training-config fields."""
    config = saved.get("config", {})
    raw = saved.get("lora", config.get("lora"))
    if isinstance(raw, Mapping):
        return LoraSpec(**{**raw, "targets": tuple(raw["targets"]), "exclude": tuple(raw.get("exclude", ()))})
    return LoraSpec(
        targets=tuple(config["lora_targets"]),
        rank=int(config["lora_rank"]),
        alpha=float(config["lora_alpha"]),
        dropout=float(config.get("lora_dropout", 0.0)),
    )
