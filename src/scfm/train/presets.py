"""Per-model default configs for the built-in models (the measurements behind them: BENCHMARKS.md).

The spec's defaults (DistillConfig) are Flux.1-dev's. The built-in models are tiny and
trained for minutes, so they need a larger learning rate, faster EMAs and no time shift
(SCFM_SPEC.md, implementation notes: unshifted grids are far better on 8x8 digits).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scfm.train.config import DistillConfig, dotted_values


def digits_config(overrides: Mapping[str, Any] | None = None, **fields: Any) -> DistillConfig:
    """The `scfm demo` preset for the shipped digits DiT (about 2 minutes of training on 2 CPU cores).

    Full-rank LoRA (128), self grids weighted toward 1- and 2-step jumps, one EMA at 0.99 as
    both fast and slow EMA, cosine learning-rate decay over 300 steps, bf16 target passes, and the
    LoRA strength trained per step count (``step_scale``: ``(8 / n) ** 0.75`` for n steps);
    BENCHMARKS.md, "Why the digits preset is what it is" and "Step scale and a fair test of
    self-distillation", gives the measurements.
    ``overrides`` and then ``fields`` apply over it, by nested, dotted or legacy flat name
    (``digits_config({"lora.rank": 32}, max_steps=100)``), as in :meth:`DistillConfig.from_dict`.
    """
    preset = {
        "max_steps": 300,
        "batch_size": 256,
        "lr": 1e-3,
        "warmup_steps": 20,
        "grad_clip": 1.0,
        "lora": {
            "rank": 128,
            "alpha": 128.0,
            "targets": ("qkv", "proj", "fc1", "fc2", "adaLN", "adaLN_out", "patch_in", "patch_out"),
        },
        "lr_schedule": "cosine",
        "plan": {
            "t_skip": 2,
            "teacher_ratio": 0.2,
            "teacher_min": 32,
            "teacher_max": 32,
            "self_grids": (2, 2, 4, 4, 4, 4, 8),
            "shift_range": (1.0, 1.0),
            "resolution_shift_prob": 0.0,
        },
        "step_scale": {"power": 0.75, "ref_steps": 8.0},
        "fast_decay": 0.99,
        "slow_decay": 0.99,
        "final_weights": "slow_ema",
        "target_precision": "bf16",
        "log_every": 10,
    }
    return DistillConfig.from_dict(dotted_values(preset, overrides or {}, fields))


def toy2d_config(overrides: Mapping[str, Any] | None = None, **fields: Any) -> DistillConfig:
    """The preset for the shipped 2-D MLP teachers; ``overrides`` and ``fields`` as in :func:`digits_config`."""
    preset = {
        "max_steps": 1000,
        "batch_size": 512,
        "lr": 1e-3,
        "warmup_steps": 20,
        "grad_clip": 1.0,
        "lora": {"rank": 16, "alpha": 16.0, "targets": ("inp", "fc1", "fc2", "time", "out")},
        "plan": {"shift_range": (1.0, 1.0), "resolution_shift_prob": 0.0},
        "fast_decay": 0.9,
        "slow_decay": 0.99,
        "final_weights": "student",
    }
    return DistillConfig.from_dict(dotted_values(preset, overrides or {}, fields))
