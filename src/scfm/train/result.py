"""The result of a distillation: one base model with LoRA, saved and loaded as safetensors."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scfm.fileio import atomic_save_safetensors, atomic_write_json, load_safetensors
from scfm.train.config import DistillConfig
from scfm.weights.lora import attach_lora, fuse_lora, has_lora, load_lora_state_dict, lora_state_dict

LORA_FILE = "lora.safetensors"
STUDENT_FILE = "student.safetensors"
EMA_FAST_FILE = "ema_fast.safetensors"
EMA_SLOW_FILE = "ema_slow.safetensors"
CONFIG_FILE = "scfm_config.json"


@dataclass
class DistilledModel:
    """The student: ``model`` is the teacher module with LoRA layers carrying the final weights.

    Call it like the teacher, ``v = distilled(x, t, **cond)``, or pass it to :func:`scfm.sample`.
    ``weights`` holds the named LoRA copies ('student', 'fast_ema', 'slow_ema') when known;
    ``history`` the logged training records. ``lora_scales`` maps a step count to the LoRA
    scale :func:`scfm.sample` uses for it when none is given (set by calibration, see
    :mod:`scfm.eval.calibrate`; empty: scale 1 everywhere).
    """

    model: nn.Module
    config: DistillConfig
    is_distilled_model = True  # class attribute: lets scfm.sample unwrap ``model`` without importing this layer
    weights: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    lora_scales: dict[int, float] = field(default_factory=dict)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **cond: Any) -> torch.Tensor:
        return self.model(x, t, **cond)

    def use_weights(self, which: str) -> None:
        """Load the named LoRA copy ('student', 'fast_ema' or 'slow_ema') into the model."""
        if which not in self.weights:
            raise ValueError(f"weights={which!r} not available; have {sorted(self.weights)}")
        load_lora_state_dict(self.model, self.weights[which])

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``lora.safetensors`` (the final LoRA), the other copies and ``scfm_config.json``."""
        directory = Path(directory)
        meta = {"format": "scfm-lora", "final_weights": self.config.final_weights}
        atomic_save_safetensors(lora_state_dict(self.model), directory / LORA_FILE, metadata=meta)
        for which, name in (("student", STUDENT_FILE), ("fast_ema", EMA_FAST_FILE), ("slow_ema", EMA_SLOW_FILE)):
            if which in self.weights:
                atomic_save_safetensors(self.weights[which], directory / name, metadata={"format": "scfm-lora"})
        scales = {str(n): s for n, s in sorted(self.lora_scales.items())}
        atomic_write_json(directory / CONFIG_FILE, {"config": self.config.to_dict(), "lora_scales": scales})
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, teacher: nn.Module) -> DistilledModel:
        """Attach the saved LoRA to ``teacher`` (modified in place) and return the student."""
        directory = Path(directory)
        config_path = directory / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(
                f"{str(config_path)!r} is missing: {str(directory)!r} is not a directory written by DistilledModel.save"
            )
        try:
            saved = json.loads(config_path.read_text())
            config = DistillConfig.from_dict(saved["config"])
            scales = {int(n): float(s) for n, s in saved.get("lora_scales", {}).items()}
        except (KeyError, ValueError, TypeError, AttributeError) as err:  # JSONDecodeError is a ValueError
            raise ValueError(f"{str(config_path)!r} is corrupt ({err}); re-save the model") from err
        if has_lora(teacher):
            raise ValueError("teacher already has LoRA layers; pass a fresh base model to DistilledModel.load")
        attach_lora(teacher, config.lora_spec())
        load_lora_state_dict(teacher, load_safetensors(directory / LORA_FILE))
        weights = {}
        for which, name in (("student", STUDENT_FILE), ("fast_ema", EMA_FAST_FILE), ("slow_ema", EMA_SLOW_FILE)):
            if (directory / name).is_file():
                weights[which] = load_safetensors(directory / name)
        device = next(teacher.parameters()).device
        teacher.to(device).eval()
        return cls(model=teacher, config=config, weights=weights, lora_scales=scales)

    def fuse(self, scale: float = 1.0) -> nn.Module:
        """Merge the LoRA into the base weights (plain module, no peft layers) and return it."""
        return fuse_lora(self.model, scale)
