"""One SCFM training step on one base model: plans, targets, student loss, EMA update."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from scfm.objective.consistency import ConsistencyPlan, consistency_target, draw_consistency_plan, implied_x0
from scfm.objective.flow import interpolate
from scfm.objective.loss import ShortcutLoss, consistency_residual, per_row_mse, scfm_loss
from scfm.objective.plans import PlanConfig, ShortcutPlan, draw_plan
from scfm.objective.step_scale import StepScale, source_row_scales, student_row_scales
from scfm.objective.targets import ShortcutTarget, VelocitySources, shortcut_target
from scfm.weights.ema import FastSlowEMA
from scfm.weights.lora import RowLoraScales
from scfm.weights.switch import WeightSwitch


@dataclass
class StepOutput:
    loss: ShortcutLoss
    residual: torch.Tensor
    batch_size: int


def autocast_context(device: torch.device, mixed_precision: str):
    """bf16/fp16 autocast for forward passes on ``device``; a no-op for 'no'."""
    if mixed_precision == "no":
        return nullcontext()
    dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class ShortcutStep:
    """Computes the SCFM loss for a batch with the student, both EMAs and the teacher
    (LoRA off) of one model. ``params`` are the live LoRA parameters.

    ``watch`` maps each velocity source (``teacher``, ``fast_ema``, ``slow_ema``) and the student's
    ``prediction`` to a bool device scalar: true once one of its outputs since :meth:`reset_watch`
    held nan/inf. Kept without a device sync; read only when a loss is not finite.
    """

    def __init__(
        self,
        model: nn.Module,
        params: list[nn.Parameter],
        ema: FastSlowEMA,
        plan_cfg: PlanConfig,
        mixed_precision: str = "no",
        target_precision: str = "same",
        step_scale: StepScale | None = None,
        self_targets: str = "ema",
    ) -> None:
        self.model, self.params, self.ema, self.plan_cfg = model, params, ema, plan_cfg
        self.step_scale = step_scale if step_scale is not None and step_scale.enabled else None
        self.row_scales = RowLoraScales(model)
        self.self_targets = self_targets
        self.switch = WeightSwitch(model, params)
        self.mixed_precision = mixed_precision
        self.target_precision = mixed_precision if target_precision == "same" else target_precision
        self.watch: dict[str, torch.Tensor] = {}

    def reset_watch(self) -> None:
        """Forget the non-finite flags of earlier steps (the engine calls it at each optimizer step)."""
        self.watch = {}

    def _note(self, name: str, v: torch.Tensor) -> torch.Tensor:
        """Record in ``watch[name]`` whether ``v`` holds nan/inf (no device sync); returns ``v``."""
        bad = ~torch.isfinite(v).all()
        seen = self.watch.get(name)
        self.watch[name] = bad if seen is None else seen | bad
        return v

    def _forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, Any], precision: str | None = None
    ) -> torch.Tensor:
        with autocast_context(x.device, precision or self.mixed_precision):
            return self.model(x, t, **cond).float()

    def _teacher(self, x, t, cond):
        cond = {k: v for k, v in cond.items() if k != ROW_SCALE}  # the teacher has no LoRA to scale
        with self.switch.teacher():
            return self._note("teacher", self._forward(x, t, cond, self.target_precision))

    # The EMAs are copies of the student, so they run as the student runs (baked CFG: one unguided pass that
    # has learned the guided velocity). Guiding them again would apply CFG twice to the self targets.
    def _fast(self, x, t, cond):
        cond = dict(cond)
        rows = cond.pop(ROW_SCALE, None)
        with self.switch.use(self.ema.fast), _student_pass(self.model), self.row_scales.apply(rows):
            return self._note("fast_ema", self._forward(x, t, cond, self.target_precision))

    def _slow(self, x, t, cond):
        cond = dict(cond)
        rows = cond.pop(ROW_SCALE, None)
        with self.switch.use(self.ema.slow), _student_pass(self.model), self.row_scales.apply(rows):
            return self._note("slow_ema", self._forward(x, t, cond, self.target_precision))

    def sources(self) -> VelocitySources:
        if self.self_targets == "teacher":  # ablation: the teacher composes the self rows' coarse jumps
            return VelocitySources(teacher=self._teacher, fast=self._teacher, slow=self._slow, self_slow=self._teacher)
        return VelocitySources(teacher=self._teacher, fast=self._fast, slow=self._slow)

    def targets(
        self,
        x_t: torch.Tensor,
        x0: torch.Tensor,
        eps: torch.Tensor,
        plan: ShortcutPlan,
        cond: dict[str, Any],
        sources: VelocitySources | None = None,
    ) -> ShortcutTarget:
        """The shortcut targets of a batch (no grad) from ``sources`` (default: this step's own), each row's
        EMA sub-steps at the LoRA strength of its grid when the run has a step scale."""
        if self.step_scale is not None:  # objective/step_scale.py
            cond = {**cond, ROW_SCALE: source_row_scales(plan, self.step_scale).to(x_t.device)}
        return shortcut_target(x_t, x0, eps, plan, cond, sources or self.sources())

    def student_velocity(self, x_t: torch.Tensor, plan: ShortcutPlan, cond: dict[str, Any]) -> torch.Tensor:
        """The student's prediction [B, ...] (with grad when enabled), each row at the LoRA strength of its jump."""
        scales = None if self.step_scale is None else student_row_scales(plan, self.step_scale).to(x_t.device)
        # keep=True: a gradient-checkpointed backward (inside backward_scope) recomputes with the same scales
        with _student_pass(self.model), self.row_scales.apply(scales, keep=True):
            return self._note("prediction", self._forward(x_t, plan.t, cond))

    def backward_scope(self):
        """The context the engine runs each micro-batch's loss *and* backward in: with a step scale, the
        per-row LoRA hooks stay on until the backward is done (checkpointing re-runs the forward there)."""
        return self.row_scales.attached() if self.step_scale is not None else nullcontext()

    def draw(
        self, size: int, generator: torch.Generator, seq_len: int | None, dtype: torch.dtype, device: torch.device
    ) -> ShortcutPlan:
        """The plan for one global batch of ``size`` rows (randomness from ``generator``)."""
        return draw_plan(size, self.plan_cfg, generator, seq_len=seq_len, dtype=dtype, device=device)

    def loss(self, x0: torch.Tensor, eps: torch.Tensor, plan: ShortcutPlan, cond: dict[str, Any]) -> StepOutput:
        """Targets (no grad) and the student's loss for x0, eps [B, ...] on the model's device,
        a plan over the same B rows, and cond batched by row."""
        x_t = interpolate(x0, eps, plan.t)
        target = self.targets(x_t, x0, eps, plan, cond)
        pred = self.student_velocity(x_t, plan, cond)
        loss = scfm_loss(pred, target.target, plan)
        return StepOutput(
            loss=loss, residual=consistency_residual(target.first_velocity, target.target, plan), batch_size=x0.shape[0]
        )


class ConsistencyStep(ShortcutStep):
    """The LCM baseline (``objective: lcm``) on the same model, LoRA, EMAs and engine:
    times from the fine grid of ``plan_cfg.teacher_min`` steps, teacher Euler step, the slow
    EMA as target network, MSE between implied x0 (see :mod:`scfm.objective.consistency`).
    Logged as the teacher part of the loss; the self/FM parts and the residual are nan."""

    def draw(
        self, size: int, generator: torch.Generator, seq_len: int | None, dtype: torch.dtype, device: torch.device
    ) -> ConsistencyPlan:
        lo, hi = self.plan_cfg.shift_range
        shift = lo + (hi - lo) * float(torch.rand((), generator=generator, dtype=torch.float64))
        return draw_consistency_plan(
            size, self.plan_cfg.teacher_min, generator, shift=shift, dtype=dtype, device=device
        )

    def loss(self, x0: torch.Tensor, eps: torch.Tensor, plan: ConsistencyPlan, cond: dict[str, Any]) -> StepOutput:
        x_t = interpolate(x0, eps, plan.t)
        target = consistency_target(x_t, plan, cond, self._teacher, self._slow)
        with _student_pass(self.model):
            pred = implied_x0(x_t, plan.t, self._note("prediction", self._forward(x_t, plan.t, cond)))
        rows = per_row_mse(pred, target)
        nan = torch.full((), float("nan"), device=x0.device)
        loss = ShortcutLoss(total=rows.mean(), teacher=rows.detach().mean(), self_=nan, fm=nan, per_row=rows.detach())
        return StepOutput(loss=loss, residual=nan, batch_size=x0.shape[0])


ROW_SCALE = "_scfm_row_lora_scale"
"""Cond key carrying the per-row LoRA scale [B] of the EMA sub-steps into the velocity sources (which remove it)."""

STEP_CLASSES = {"scfm": ShortcutStep, "lcm": ConsistencyStep}
"""Training objectives by config name (``DistillConfig.objective``)."""


def _student_pass(model: nn.Module):
    """The adapter's student-pass context (baked CFG turns guidance off there), else a no-op."""
    hook = getattr(model, "student_pass", None)
    return hook() if callable(hook) else nullcontext()
