"""Registry, save and load for the built-in velocity models (2-D MLP, digits DiT).

A built-in model file is safetensors with metadata ``scfm_model`` (the registry name) and
``config`` (JSON of the model's config dataclass), so it loads without pickle.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from safetensors import safe_open
from torch import nn

from scfm.fileio import atomic_save_safetensors, load_safetensors
from scfm.models.digits_dit import DigitsDiT, DigitsDiTConfig
from scfm.models.mlp2d import MLP2DConfig, VelocityMLP2D

BUILTIN_MODELS: dict[str, tuple[type[nn.Module], type]] = {
    "digits_dit": (DigitsDiT, DigitsDiTConfig),
    "mlp2d": (VelocityMLP2D, MLP2DConfig),
}

SHIPPED_TEACHERS = {
    "digits": "digits_teacher.safetensors",
    "toy2d:8gaussians": "toy2d_8gaussians_teacher.safetensors",
}


def build_builtin(name: str, config: dict[str, Any] | None = None) -> nn.Module:
    """Build the built-in model ``name`` (one of BUILTIN_MODELS) from a config dict."""
    if name not in BUILTIN_MODELS:
        raise ValueError(f"model={name!r} is not a built-in model; choose one of {sorted(BUILTIN_MODELS)}")
    cls, cfg_cls = BUILTIN_MODELS[name]
    return cls(cfg_cls(**(config or {})))


def builtin_name(model: nn.Module) -> str:
    for name, (cls, _) in BUILTIN_MODELS.items():
        if type(model) is cls:
            return name
    raise TypeError(f"{type(model).__name__} is not a built-in scfm model")


def save_builtin(model: nn.Module, path: str | os.PathLike, extra: dict[str, str] | None = None) -> Path:
    """Write the model's weights and config as one safetensors file, atomically."""
    meta = {"scfm_model": builtin_name(model), "config": json.dumps(model.config_dict())}
    meta.update(extra or {})
    return atomic_save_safetensors(model.state_dict(), path, metadata=meta)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as err:  # safetensors raises several types for corrupt headers
        raise ValueError(f"weights file {str(path)!r} is corrupt or not safetensors ({err})") from err


def load_builtin(path: str | os.PathLike, device: str = "cpu") -> nn.Module:
    """Load a model written by :func:`save_builtin`; errors name the file and the fix."""
    tensors = load_safetensors(path)
    meta = read_metadata(path)
    if "scfm_model" not in meta:
        raise ValueError(f"{str(path)!r} has no 'scfm_model' metadata: it was not written by scfm save_builtin")
    model = build_builtin(meta["scfm_model"], json.loads(meta["config"]))
    model.load_state_dict(tensors)
    return model.to(device).eval()


def shipped_teacher_path(name: str = "digits") -> Path:
    if name not in SHIPPED_TEACHERS:
        raise ValueError(
            f"no shipped teacher {name!r}; the package ships {sorted(SHIPPED_TEACHERS)} "
            "(train others with scfm pretrain)"
        )
    return Path(str(resources.files("scfm") / "assets" / SHIPPED_TEACHERS[name]))


def load_shipped_teacher(name: str = "digits", device: str = "cpu") -> nn.Module:
    path = shipped_teacher_path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"shipped teacher {str(path)!r} is missing; rebuild it with the command in README (scfm pretrain)"
        )
    return load_builtin(path, device=device)
