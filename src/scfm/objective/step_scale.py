"""LoRA strength as a known function of the step count: ``scale(n) = (ref_steps / n) ** power``.

One SCFM velocity field serves every jump size, so its LoRA delta is a compromise between
them (big jumps want more correction than small ones) and a scale per step count has to be
measured after training. With a step scale the student is *trained* at the strength its jump
will be sampled at: a jump that covers one cell of an ``n``-step grid runs with the LoRA delta
times ``scale(n)``. To first order in the jump ``d = 1 / n`` the average velocity is the
instantaneous one plus a term proportional to ``d`` (``u = v - d/2 dv/dt + O(d^2)``), which
``power = 1`` matches; ``power = 0`` is the method as published (scale 1 for every jump).

An ``n``-step sampler then uses ``scale(n)`` for all its steps, on any shift: a shortcut jump
over ``t_skip`` cells of a grid of size ``N`` is one cell of the ``N / t_skip``-step grid with
the same shift, and its sub-steps are cells of the ``N``-step grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scfm.objective.plans import ShortcutPlan


@dataclass(frozen=True)
class StepScale:
    """``scale(n) = (ref_steps / n) ** power``: 1 at ``ref_steps``, larger for fewer steps."""

    power: float = 0.0
    """0: one LoRA strength for every jump (the published method); 1: strength proportional to the jump."""
    ref_steps: float = 4.0
    """Step count sampled at LoRA scale 1."""

    @property
    def enabled(self) -> bool:
        return self.power != 0.0

    def for_steps(self, steps: float | torch.Tensor) -> float | torch.Tensor:
        """LoRA scale for a sampler of ``steps`` (> 0) steps; a tensor gives a tensor."""
        return (self.ref_steps / steps) ** self.power

    def validate(self) -> None:
        if not 0.0 <= self.power <= 2.0:
            raise ValueError(f"step_scale.power={self.power} must lie in [0, 2] (0: off, 1: linear in the jump)")
        if not self.ref_steps > 0:
            raise ValueError(f"step_scale.ref_steps={self.ref_steps} must be > 0")


def student_row_scales(plan: ShortcutPlan, step_scale: StepScale) -> torch.Tensor:
    """LoRA scale [B] of the student on each row: ``scale(n / t_skip)`` on shortcut rows (the jump
    is one cell of that grid), 0 on flow-matching rows (an instantaneous velocity: the teacher's)."""
    steps = plan.n.to(torch.float64) / plan.t_skip
    scales = step_scale.for_steps(steps.clamp_min(1e-12))
    return torch.where(plan.is_fm, torch.zeros_like(scales), scales).float()


def source_row_scales(plan: ShortcutPlan, step_scale: StepScale) -> torch.Tensor:
    """LoRA scale [B] of the EMA sub-steps of each row: ``scale(n)`` (each sub-step is one cell of
    the row's ``n``-step grid); 0 on flow-matching rows, which take no sub-step."""
    steps = plan.n.to(torch.float64)
    scales = step_scale.for_steps(steps.clamp_min(1e-12))
    return torch.where(plan.is_fm, torch.zeros_like(scales), scales).float()
