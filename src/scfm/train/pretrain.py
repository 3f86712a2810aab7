"""Pretrain a built-in teacher by plain flow matching (full weights, weight EMA)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from scfm.objective.flow import flow_matching_target, interpolate


@dataclass
class PretrainConfig:
    steps: int = 6000
    """Optimizer steps."""
    lr: float = 5e-4
    """AdamW learning rate (cosine decay to 10% after a 200-step warm-up)."""
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    """Decay of the weight EMA that becomes the shipped teacher."""
    warmup: int = 200
    grad_clip: float = 1.0


def _lr_factor(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item())


def pretrain_flow_matching(
    model: nn.Module,
    batches: Iterator[dict],
    cfg: PretrainConfig,
    generator: torch.Generator,
    progress: bool = True,
) -> nn.Module:
    """Train ``model`` on ``batches`` ({"x0": [B, ...], **cond}) by flow matching.

    Times are t ~ U(0, 1) and noise eps ~ N(0, I), both drawn from ``generator``.
    Returns the EMA copy of the weights (eval mode); ``model`` holds the raw weights.
    """
    device = next(model.parameters()).device
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg))
    bar = tqdm(range(cfg.steps), desc="pretrain", disable=not progress)
    model.train()
    for _ in bar:
        batch = next(batches)
        x0 = batch["x0"]
        cond = {k: v.to(device) for k, v in batch.items() if k != "x0"}
        eps = torch.randn(x0.shape, generator=generator)
        t = torch.rand(x0.shape[0], generator=generator)
        x0, eps, t = x0.to(device), eps.to(device), t.to(device)
        loss = (model(interpolate(x0, eps, t), t, **cond) - flow_matching_target(x0, eps)).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - cfg.ema_decay)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    return ema
