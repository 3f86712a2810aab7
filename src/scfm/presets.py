"""Per-model default configs, chosen by measurement (see BENCHMARKS.md).

The spec's defaults (DistillConfig) are Flux.1-dev's. The built-in models are tiny and
trained for minutes, so they need a larger learning rate, faster EMAs and no time shift
(SCFM_SPEC.md, implementation notes: unshifted grids are far better on 8x8 digits).
"""

from __future__ import annotations

from scfm.train.config import DistillConfig


def digits_config(**overrides) -> DistillConfig:
    """The `scfm demo` preset for the shipped digits DiT (about 2 minutes of training on 2 CPU cores).

    Measured choices (BENCHMARKS.md, eval noise seed 999, not the demo's): LoRA rank 128
    (full rank for the 128-wide DiT; the late 1-2 step jumps need the capacity: 2-step FD
    2.53 -> 1.92 against rank 32); teacher_ratio 0.2 and self grids (2, 2, 4, 4, 4, 4, 8)
    weight the self branch toward 1- and 2-step jumps, and a LoRA scale below 1 at sampling
    recovers 4-8 steps (``scfm.eval.calibrate``); one EMA at 0.99 serves as both fast and
    slow EMA (fast 0.9 / slow 0.99 gave worse 4-8 step students); a cosine learning-rate
    decay over 300 steps (longer runs trade multi-step quality for 1-step quality: the one
    student field serves every jump size); bf16 target passes cut training time by about
    25% on CPUs with AMX at no measured FD cost.
    """
    values = dict(
        max_steps=300,
        batch_size=256,
        lr=1e-3,
        warmup_steps=20,
        grad_clip=1.0,
        lora_rank=128,
        lora_alpha=128.0,
        lora_targets=("qkv", "proj", "fc1", "fc2", "adaLN", "adaLN_out", "patch_in", "patch_out"),
        t_skip=2,
        lr_schedule="cosine",
        teacher_ratio=0.2,
        teacher_min=32,
        teacher_max=32,
        self_grids=(2, 2, 4, 4, 4, 4, 8),
        shift_min=1.0,
        shift_max=1.0,
        resolution_shift_prob=0.0,
        fast_decay=0.99,
        slow_decay=0.99,
        final_weights="slow_ema",
        target_precision="bf16",
        log_every=10,
    )
    values.update(overrides)
    return DistillConfig(**values)


def toy2d_config(**overrides) -> DistillConfig:
    """Preset for the 2-D MLP teachers."""
    values = dict(
        max_steps=1000,
        batch_size=512,
        lr=1e-3,
        warmup_steps=20,
        grad_clip=1.0,
        lora_rank=16,
        lora_alpha=16.0,
        lora_targets=("inp", "fc1", "fc2", "time", "out"),
        shift_min=1.0,
        shift_max=1.0,
        resolution_shift_prob=0.0,
        fast_decay=0.9,
        slow_decay=0.99,
        final_weights="student",
    )
    values.update(overrides)
    return DistillConfig(**values)
