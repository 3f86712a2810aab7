"""The flow-matching path: interpolation and the plain velocity target."""

from __future__ import annotations

import torch


def broadcast_time(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape t [B] to [B, 1, ..., 1] so it broadcasts against ``like`` [B, ...]."""
    return t.view(t.shape[0], *([1] * (like.dim() - 1))).to(like.dtype)


def interpolate(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t = (1 - t) * x0 + t * eps``; x0, eps [B, ...], t [B] in [0, 1]."""
    tb = broadcast_time(t, x0)
    return (1 - tb) * x0 + tb * eps


def flow_matching_target(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The conditional velocity ``eps - x0`` [B, ...]."""
    return eps - x0
