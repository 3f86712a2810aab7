"""Shortcut targets: the average velocity over a jump, built from three velocity sources.

Spec, training step point 5. The first ``t_skip / 2`` sub-steps take their velocity from the
teacher (teacher-branch rows) or the fast EMA (self-branch rows); the rest from the slow
EMA on every shortcut row. Flow-matching rows get ``eps - x0`` and cost no forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from scfm.objective.flow import broadcast_time
from scfm.objective.plans import ShortcutPlan

VelocityFn = Callable[[torch.Tensor, torch.Tensor, Mapping[str, Any]], torch.Tensor]
"""``v = fn(x [b, ...], t [b], cond)`` in the spec's convention; called without gradient."""


@dataclass
class VelocitySources:
    """The three velocity fields a target is built from (see module docstring).

    ``self_slow``: the source of the second half of the self-branch sub-steps when it is not
    ``slow`` (None: ``slow``, as the method does); the ablation that lets the teacher compose the
    coarse jumps sets ``fast`` and ``self_slow`` to the teacher and keeps everything else.
    """

    teacher: VelocityFn
    fast: VelocityFn
    slow: VelocityFn
    self_slow: VelocityFn | None = None


@dataclass
class ShortcutTarget:
    """target [B, ...]: average velocity of each row's jump (``eps - x0`` on FM rows).

    first_velocity [B, ...]: velocity of the first sub-step (the source's instantaneous
    prediction at x_t; zeros on FM rows), used for the consistency residual.
    """

    target: torch.Tensor
    first_velocity: torch.Tensor


def index_cond(cond: Mapping[str, Any], index: torch.Tensor, batch_size: int) -> dict[str, Any]:
    """Select rows ``index`` of every tensor in ``cond`` whose first dim is the batch.

    Other entries (scalars, non-batched tensors, strings) pass through unchanged.
    """
    out = {}
    for key, value in cond.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch_size:
            out[key] = value.index_select(0, index.to(value.device))
        else:
            out[key] = value
    return out


def _velocity_on_rows(
    fn: VelocityFn, rows: torch.Tensor, x: torch.Tensor, t: torch.Tensor, cond: Mapping[str, Any], out: torch.Tensor
) -> None:
    """Evaluate ``fn`` on the rows where ``rows`` [B] is true and write them into ``out``."""
    index = rows.nonzero(as_tuple=True)[0]
    if index.numel() == 0:
        return
    v = fn(x.index_select(0, index), t.index_select(0, index), index_cond(cond, index, x.shape[0]))
    out.index_copy_(0, index, v.to(out.dtype))


@torch.inference_mode()
def shortcut_target(
    x_t: torch.Tensor,
    x0: torch.Tensor,
    eps: torch.Tensor,
    plan: ShortcutPlan,
    cond: Mapping[str, Any],
    sources: VelocitySources,
) -> ShortcutTarget:
    """Build targets for a batch: x_t, x0, eps [B, ...]; plan over B rows; cond batched by row.

    Each sub-step m: ``v = V(x, t)``, ``acc += dt_m v``, ``x -= dt_m v``, ``t -= dt_m``;
    the target is ``acc / D`` with ``D = sum_m dt_m``. Runs in inference mode (no autograd
    bookkeeping); the returned tensors are constants for the loss.
    """
    k, half = plan.t_skip, plan.t_skip // 2
    shortcut = plan.is_shortcut
    x, t = x_t.clone(), plan.t.clone()
    acc = torch.zeros_like(x_t)
    first = torch.zeros_like(x_t)
    for m in range(k):
        v = torch.zeros_like(x_t)
        if m < half:
            _velocity_on_rows(sources.teacher, plan.is_teacher, x, t, cond, v)
            _velocity_on_rows(sources.fast, plan.is_self, x, t, cond, v)
        elif sources.self_slow is None:
            _velocity_on_rows(sources.slow, shortcut, x, t, cond, v)
        else:
            _velocity_on_rows(sources.slow, plan.is_teacher, x, t, cond, v)
            _velocity_on_rows(sources.self_slow, plan.is_self, x, t, cond, v)
        if m == 0:
            first = v
        dt = broadcast_time(plan.dt[:, m], x)
        acc = acc + dt * v
        x = x - dt * v
        t = t - plan.dt[:, m]
    jump = broadcast_time(plan.jump.clamp_min(torch.finfo(plan.dt.dtype).tiny), x)
    rows = shortcut.view(-1, *([1] * (x.dim() - 1)))
    target = torch.where(rows, acc / jump, eps - x0)
    return ShortcutTarget(target=target, first_velocity=first)
