"""Time grids and shifts shared by training and sampling.

Convention: t in [0, 1], t = 1 is noise, and a grid runs from t_0 = 1 - 1e-5 (the first
point is clamped) down to t_n = 0. All functions are pure torch and work in any dtype
(tests use float64); batched versions take one grid size and shift per sample.
"""

from __future__ import annotations

import math

import torch

FIRST_POINT = 1.0 - 1e-5
"""The first grid point is clamped here, so t = 1 exactly is never fed to a model."""

RESOLUTION_SHIFT_POINTS = ((256, 0.5), (4096, 1.15))
"""(seq_len, mu) pairs the resolution shift interpolates linearly, as Flux does."""


def shift_fixed(t: torch.Tensor, shift: float | torch.Tensor) -> torch.Tensor:
    """Fixed shift ``s*t / (1 + (s - 1)*t)``; s = 1 is the identity, s > 1 spends more time near noise."""
    return shift * t / (1 + (shift - 1) * t)


def resolution_mu(seq_len: int | torch.Tensor) -> float | torch.Tensor:
    """``mu`` linear in the token count through (256, 0.5) and (4096, 1.15)."""
    (x1, y1), (x2, y2) = RESOLUTION_SHIFT_POINTS
    slope = (y2 - y1) / (x2 - x1)
    return y1 + slope * (seq_len - x1)


def shift_resolution(t: torch.Tensor, mu: float | torch.Tensor) -> torch.Tensor:
    """Resolution ("dynamic") shift ``e^mu / (e^mu + (1/t - 1))``; maps 0 -> 0 and 1 -> 1.

    Equal to :func:`shift_fixed` with ``s = e^mu``; written in the multiplicative form so
    t = 0 is exact.
    """
    s = torch.exp(torch.as_tensor(mu, dtype=t.dtype, device=t.device)) if not isinstance(mu, float) else math.exp(mu)
    return shift_fixed(t, s)


def base_grid(n: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """``linspace(1, 0, n + 1)`` of shape [n + 1]."""
    if n < 1:
        raise ValueError(f"steps={n} must be a positive integer (at least one Euler step)")
    return torch.linspace(1.0, 0.0, n + 1, dtype=dtype, device=device)


def time_grid(
    n: int,
    shift: float = 1.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Sampling grid [n + 1] from ``1 - 1e-5`` down to 0 with a fixed shift ``s``."""
    if shift <= 0:
        raise ValueError(f"shift={shift} must be > 0 (1.0 means no shift)")
    grid = shift_fixed(base_grid(n, dtype, device), shift)
    grid[0] = min(float(grid[0]), FIRST_POINT)
    return grid


def batched_grid_points(n: torch.Tensor, index: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Grid point ``index`` of a per-sample grid with ``n`` steps and fixed-shift factor ``shift``.

    n [B] int64 (>= 1), index [B] or [B, K] int64 in 0..n, shift [B] float (the effective
    factor s; a resolution shift is s = e^mu). Returns t of index's shape, first point clamped.
    """
    n_f = n.to(shift.dtype)
    if index.dim() == 2:
        n_f, shift = n_f[:, None], shift[:, None]
    base = 1.0 - index.to(shift.dtype) / n_f
    t = shift_fixed(base, shift)
    return t.clamp(max=FIRST_POINT)
