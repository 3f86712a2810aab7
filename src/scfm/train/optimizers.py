"""The LoRA optimizer: torch's AdamW, or AdamW with 8-bit states (bitsandbytes).

AdamW keeps two fp32 moments per LoRA weight (8 bytes); ``adamw8bit`` keeps them as uint8 codes
with one fp32 absmax per block of 256 (about 2 bytes), bitsandbytes' blockwise-quantized Adam that
the Flux LoRA trainers use. bitsandbytes runs it on CPU and CUDA; tensors under 4096 elements keep
fp32 moments (its ``min_8bit_size``). The state is plain tensors, so checkpoints stay safetensors.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import torch

OPTIMIZERS = ("adamw", "adamw8bit")


def optimizer_problem(name: str) -> str | None:
    """Why ``optimizer=name`` cannot run here (one sentence with the fix), or None."""
    if name not in OPTIMIZERS:
        return f"must be one of {OPTIMIZERS}"
    if name == "adamw8bit" and importlib.util.find_spec("bitsandbytes") is None:
        return "needs bitsandbytes: pip install 'scfm[quantization]' (or pip install bitsandbytes)"
    return None


def make_optimizer(
    name: str, params: Sequence[torch.nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """``name`` ('adamw' or 'adamw8bit') over ``params`` with the given learning rate and weight decay."""
    problem = optimizer_problem(name)
    if problem:
        raise ValueError(f"optimizer={name!r}: {problem}")
    if name == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(list(params), lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(list(params), lr=lr, weight_decay=weight_decay)
