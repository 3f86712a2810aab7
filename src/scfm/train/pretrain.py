"""Pretrain a built-in teacher by flow matching (full weights, weight EMA).

With ``fm_ratio < 1`` this is SCFM folded into pretraining (spec, training step): a fraction
``fm_ratio`` of each batch takes the plain target ``eps - x0``, the rest shortcut targets.
There is no separate teacher: the teacher branch uses the current weights, and the fast and
slow EMAs are EMAs of all weights.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from scfm.objective.flow import flow_matching_target, interpolate
from scfm.objective.plans import PlanConfig, draw_plan
from scfm.train.step import ShortcutStep
from scfm.weights.ema import FastSlowEMA


@dataclass
class PretrainConfig:
    steps: int = 6000
    """Optimizer steps."""
    lr: float = 5e-4
    """AdamW learning rate (cosine decay to 10% after the warm-up)."""
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    """Decay of the weight EMA that becomes the teacher."""
    warmup: int = 200
    grad_clip: float = 1.0
    fm_ratio: float = 1.0
    """Fraction of each batch with the plain flow-matching target; < 1 folds SCFM in."""
    shortcut: PlanConfig | None = None
    """Plan config for the shortcut rows (fm_ratio is taken from above); None = unshifted defaults."""


def pretrain_lr_factor(step: int, cfg: PretrainConfig) -> float:
    """Learning-rate multiplier at ``step``: linear warmup over ``cfg.warmup`` steps, then cosine decay to 0.1."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item())


class FoldedShortcutStep(ShortcutStep):
    """SCFM step whose teacher is the current full weights (no LoRA, no frozen copy)."""

    def _teacher(self, x, t, cond):
        return self._forward(x, t, cond)


def _plain_loss(model: nn.Module, x0: torch.Tensor, cond: dict, generator: torch.Generator) -> torch.Tensor:
    eps = torch.randn(x0.shape, generator=generator).to(x0.device)
    t = torch.rand(x0.shape[0], generator=generator).to(x0.device)
    return (model(interpolate(x0, eps, t), t, **cond) - flow_matching_target(x0, eps)).square().mean()


def _folded_loss(step: FoldedShortcutStep, x0: torch.Tensor, cond: dict, generator: torch.Generator) -> torch.Tensor:
    plan = draw_plan(x0.shape[0], step.plan_cfg, generator, dtype=x0.dtype, device=x0.device)
    eps = torch.randn(x0.shape, generator=generator).to(x0.device)
    return step.loss(x0, eps, plan, cond).loss.total


def pretrain_flow_matching(
    model: nn.Module,
    batches: Iterator[dict],
    cfg: PretrainConfig,
    generator: torch.Generator,
    progress: bool = True,
) -> nn.Module:
    """Train ``model`` on ``batches`` ({"x0": [B, ...], **cond}); randomness from ``generator``.

    Plain mode draws t ~ U(0, 1). Returns the EMA copy of the weights (eval mode).
    """
    if not 0.0 < cfg.fm_ratio <= 1.0:
        raise ValueError(f"fm_ratio={cfg.fm_ratio} must lie in (0, 1] for pretraining (1 = plain flow matching)")
    device = next(model.parameters()).device
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: pretrain_lr_factor(s, cfg))
    folded = None
    if cfg.fm_ratio < 1.0:
        plan = cfg.shortcut or PlanConfig(shift_range=(1.0, 1.0), resolution_shift_prob=0.0)
        plan = PlanConfig(**{**plan.__dict__, "fm_ratio": cfg.fm_ratio})
        plan.validate()
        shortcut_ema = FastSlowEMA([n for n, _ in model.named_parameters()], params)
        folded = FoldedShortcutStep(model, params, shortcut_ema, plan)
    bar = tqdm(range(cfg.steps), desc="pretrain", disable=not progress)
    model.train()
    for _ in bar:
        batch = next(batches)
        x0 = batch["x0"].to(device)
        cond = {k: v.to(device) for k, v in batch.items() if k != "x0"}
        loss = _plain_loss(model, x0, cond, generator) if folded is None else _folded_loss(folded, x0, cond, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), params, 1 - cfg.ema_decay)
        if folded is not None:
            folded.ema.update(params)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    return ema
