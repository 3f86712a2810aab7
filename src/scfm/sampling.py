"""Few-step solvers on the shared time grids: Euler (the SCFM sampler), and as training-free
baselines Heun and DPM-Solver++(2M) written for flow matching.

A model is any callable ``v = model(x [B, ...], t [B] in [0, 1], **cond)`` in the spec's
convention (t = 1 is noise). Sampling integrates from ``noise`` at t = 1 down to t = 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from scfm.distilled import DistilledModel
from scfm.models.adapters import VelocityAdapter
from scfm.objective.grids import time_grid
from scfm.weights.lora import has_lora
from scfm.weights.lora import lora_scale as scaled_lora

SOLVERS = ("euler", "heun", "dpmpp2m", "consistency")


def solver_nfe(solver: str, steps: int) -> int:
    """Model evaluations a solver spends for ``steps`` steps (Heun's last step is Euler)."""
    _check(solver, steps)
    return 2 * steps - 1 if solver == "heun" else steps


def _check(solver: str, steps: int) -> None:
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r} is unknown; choose one of {SOLVERS}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be a positive integer")


def _velocity(model: Callable[..., torch.Tensor], x: torch.Tensor, t: float, cond: dict[str, Any]) -> torch.Tensor:
    return model(x, torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype), **cond)


def euler(
    model: Callable[..., torch.Tensor], x: torch.Tensor, grid: torch.Tensor, cond: dict[str, Any]
) -> torch.Tensor:
    """``x_{i+1} = x_i + (t_{i+1} - t_i) v(x_i, t_i)`` over ``grid`` [n + 1] (a Python-float loop)."""
    ts = grid.tolist()
    for t_now, t_next in zip(ts[:-1], ts[1:]):
        x = x + (t_next - t_now) * _velocity(model, x, t_now, cond)
    return x


def heun(model: Callable[..., torch.Tensor], x: torch.Tensor, grid: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
    """Heun's second-order method; the step that lands on t = 0 is a plain Euler step (EDM)."""
    ts = grid.tolist()
    for t_now, t_next in zip(ts[:-1], ts[1:]):
        v = _velocity(model, x, t_now, cond)
        x_euler = x + (t_next - t_now) * v
        if t_next > 0:
            x = x + (t_next - t_now) * 0.5 * (v + _velocity(model, x_euler, t_next, cond))
        else:
            x = x_euler
    return x


def _lam(t: float) -> float:
    """log-SNR ``log((1 - t) / t)`` of the path x_t = (1 - t) x0 + t eps."""
    return math.log((1.0 - t) / t)


def dpmpp2m(
    model: Callable[..., torch.Tensor], x: torch.Tensor, grid: torch.Tensor, cond: dict[str, Any]
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al., 2022) in data prediction ``x0 = x - t v``; first and final
    steps are first order (the final one lands on the data prediction)."""
    ts = grid.tolist()
    prev_x0, prev_h = None, None
    for t_now, t_next in zip(ts[:-1], ts[1:]):
        x0 = x - t_now * _velocity(model, x, t_now, cond)
        if t_next <= 0:
            return x0
        h = _lam(t_next) - _lam(t_now)
        d = x0
        if prev_x0 is not None:
            r = prev_h / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * prev_x0
        x = (t_next / t_now) * x - (1 - t_next) * math.expm1(-h) * d
        prev_x0, prev_h = x0, h
    return x


def consistency(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    grid: torch.Tensor,
    cond: dict[str, Any],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Multistep consistency sampling (the LCM sampler): at each grid point take the implied
    data ``x0 = x - t v`` and re-noise it to the next point with fresh noise from
    ``generator`` (on x's device; seeded 0 when None). One step is an Euler step."""
    ts = grid.tolist()
    if generator is None:
        generator = torch.Generator(device=x.device).manual_seed(0)
    for t_now, t_next in zip(ts[:-1], ts[1:]):
        x0 = x - t_now * _velocity(model, x, t_now, cond)
        if t_next <= 0:
            return x0
        fresh = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = (1.0 - t_next) * x0 + t_next * fresh
    return x


_SOLVER_FNS = {"euler": euler, "heun": heun, "dpmpp2m": dpmpp2m, "consistency": consistency}


@torch.no_grad()
def sample(
    model: Callable[..., torch.Tensor],
    noise: torch.Tensor,
    steps: int = 4,
    solver: str = "euler",
    shift: float | None = None,
    lora_scale: float | None = None,
    generator: torch.Generator | None = None,
    **cond: Any,
) -> torch.Tensor:
    """Integrate ``noise`` [B, ...] from t = 1 to t = 0 in ``steps`` steps; returns x0 [B, ...].

    ``shift`` applies the fixed shift to the grid (None: a diffusers adapter's ``default_shift``,
    the shifted grids its family trains on; 1, no shift, for any other model); ``lora_scale``
    multiplies the LoRA delta of a distilled model (fewer steps often like 1-1.75); left None, a ``DistilledModel`` uses
    its calibrated scale for ``steps`` (``lora_scales``) if it has one, else its trained step scale
    (``step_scale``, when the run used one), else 1. ``generator``
    feeds the re-noising of the stochastic ``consistency`` solver (others ignore it). ``cond`` goes to every model call.
    A ``DistilledModel`` (from :func:`scfm.distill`) can be passed directly.
    """
    _check(solver, steps)
    distilled = isinstance(model, DistilledModel)
    if lora_scale is None and distilled:
        lora_scale = model.scale_for_steps(steps)
    scale_ctx = nullcontext()
    if lora_scale is not None:
        if not isinstance(model, nn.Module) or not has_lora(model):
            raise ValueError("lora_scale was given but the model has no LoRA layers")
        scale_ctx = scaled_lora(model, lora_scale)
    if shift is None:
        inner = model.model if distilled else model
        shift = inner.default_shift if isinstance(inner, VelocityAdapter) else 1.0
    grid = time_grid(steps, shift, dtype=torch.float64)
    student_ctx = model.student_pass() if distilled else nullcontext()  # sampled as trained (baked CFG)
    was_training = model.training if isinstance(model, nn.Module) else False
    if isinstance(model, nn.Module):
        model.eval()
    try:
        with scale_ctx, student_ctx:
            if solver == "consistency":
                return consistency(model, noise, grid, cond, generator)
            return _SOLVER_FNS[solver](model, noise, grid, cond)
    finally:
        if isinstance(model, nn.Module):
            model.train(was_training)
