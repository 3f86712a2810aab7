"""Latent consistency distillation (LCM, Luo et al. 2023) for flow matching: the baseline
objective that the benchmarks compare SCFM against on the same harness.

A velocity model ``v(x, t)`` defines the consistency function (the x0 it implies)::

    f(x_t, t) = x_t - t * v(x_t, t)        (f(x, 0) = x: the boundary condition holds by construction)

One training row: times ``s < t`` adjacent on a fine grid of n steps. The teacher takes one
Euler step ``x_s = x_t - (t - s) v_teacher(x_t, t)``; the target network (an EMA of the LoRA)
gives ``f_target = f_ema(x_s, s)``; the student is trained so that ``f_student(x_t, t)``
matches it (MSE in x0 space). Cost per row: one teacher and one EMA forward without
gradient, one student forward and backward, the same count as SCFM with t_skip = 2.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from scfm.objective.flow import broadcast_time
from scfm.objective.grids import batched_grid_points
from scfm.objective.targets import VelocityFn, index_cond


@dataclass
class ConsistencyPlan:
    """Per-row times for a batch of B rows: t [B] in (0, 1) and s [B] in [0, t), on one device."""

    t: torch.Tensor
    s: torch.Tensor

    def select(self, rows: slice) -> ConsistencyPlan:
        return ConsistencyPlan(t=self.t[rows], s=self.s[rows])


def draw_consistency_plan(
    batch_size: int,
    n: int,
    generator: torch.Generator,
    shift: float = 1.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> ConsistencyPlan:
    """Adjacent grid points ``t = grid[j]``, ``s = grid[j + 1]`` with j ~ U{0, ..., n - 1}
    on the n-step grid with fixed shift ``shift``; randomness from ``generator`` (CPU)."""
    if n < 1:
        raise ValueError(f"consistency grid n={n} must be >= 1")
    j = torch.randint(0, n, (batch_size,), generator=generator)
    steps = torch.full((batch_size,), n, dtype=torch.long)
    shifts = torch.full((batch_size,), float(shift), dtype=torch.float64)
    points = batched_grid_points(steps, torch.stack([j, j + 1], dim=1), shifts)
    points = points.to(dtype=dtype, device=device)
    return ConsistencyPlan(t=points[:, 0], s=points[:, 1])


def implied_x0(x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The consistency function ``f = x_t - t v``: x_t, v [B, ...], t [B] -> x0 estimate [B, ...]."""
    return x_t - broadcast_time(t, x_t) * v


@torch.inference_mode()
def consistency_target(
    x_t: torch.Tensor,
    plan: ConsistencyPlan,
    cond: Mapping[str, Any],
    teacher: VelocityFn,
    target_net: VelocityFn,
) -> torch.Tensor:
    """x0 target [B, ...] for the student at (x_t, plan.t): one teacher Euler step to
    ``plan.s``, then the target network's consistency function there (rows with s = 0 take
    the Euler step's result itself, the boundary condition). No gradient."""
    v_teacher = teacher(x_t, plan.t, cond)
    x_s = x_t - broadcast_time(plan.t - plan.s, x_t) * v_teacher
    inner = plan.s > 0
    target = x_s.clone()
    index = inner.nonzero(as_tuple=True)[0]
    if index.numel():
        sub_x, sub_s = x_s.index_select(0, index), plan.s.index_select(0, index)
        v_ema = target_net(sub_x, sub_s, index_cond(cond, index, x_t.shape[0]))
        target.index_copy_(0, index, implied_x0(sub_x, sub_s, v_ema.to(x_s.dtype)))
    return target
