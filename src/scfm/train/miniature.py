"""Flow-matching training of a text-conditioned velocity model on cached latents and prompt embeddings.

The model is any ``velocity(x, t, **cond) -> v`` module in scfm's convention (a diffusers
transformer behind its adapter): ``x_t = (1 - t) x0 + t eps``, target ``eps - x0``. Latents are
cached as posterior means and standard deviations [N, C, h, w] and sampled afresh each step;
prompt embeddings are cached once per distinct prompt ([P, ...] per cond key), so no text
encoder runs during training. Each row takes a random prompt of its digit; with probability
``prompt_dropout`` the empty prompt instead (classifier-free guidance training). Times are
drawn logit-normal (or uniform) and shifted by the family's sampling shift. A weight EMA of
the whole model is kept and returned. All randomness comes from one ``torch.Generator``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from scfm.objective.flow import flow_matching_target, interpolate
from scfm.objective.grids import shift_fixed
from scfm.train.pretrain import pretrain_lr_factor


@dataclass
class LatentFlowConfig:
    steps: int = 3000
    """Optimizer steps."""
    batch_size: int = 128
    lr: float = 1e-3
    """AdamW learning rate (linear warm-up, then cosine decay to 10%)."""
    weight_decay: float = 0.0
    warmup: int = 200
    ema_decay: float = 0.999
    """Decay of the weight EMA that is returned (and shipped); step k uses ``min(ema_decay, (1 + k) / (10 + k))``,
    so the random initial weights do not linger in the EMA of a short run."""
    grad_clip: float = 1.0
    prompt_dropout: float = 0.1
    """Probability that a row's prompt is replaced by the empty prompt."""
    time_sampling: str = "logit_normal"
    """'logit_normal' (t = sigmoid(N(logit_mean, logit_std^2)), SD3 / Flux) or 'uniform'."""
    logit_mean: float = 0.0
    logit_std: float = 1.0
    time_shift: float = 1.0
    """Fixed shift applied to the drawn times (``t -> s t / (1 + (s - 1) t)``); 1 = none."""

    def validate(self) -> None:
        if self.time_sampling not in ("logit_normal", "uniform"):
            raise ValueError(f"time_sampling={self.time_sampling!r} must be 'logit_normal' or 'uniform'")
        if not 0.0 <= self.prompt_dropout < 1.0:
            raise ValueError(f"prompt_dropout={self.prompt_dropout} must lie in [0, 1)")
        if self.time_shift <= 0:
            raise ValueError(f"time_shift={self.time_shift} must be > 0")


@dataclass
class LatentTable:
    """Posterior mean and std [N, C, h, w] (already in the transformer's normalization) and digits [N]."""

    mean: torch.Tensor
    std: torch.Tensor
    labels: torch.Tensor


@dataclass
class PromptTable:
    """Cond tensors [P, ...] (one row per prompt) and each prompt's digit [P]; the row labelled -1 is the empty
    prompt."""

    cond: dict[str, torch.Tensor]
    labels: torch.Tensor


def draw_times(batch_size: int, cfg: LatentFlowConfig, generator: torch.Generator) -> torch.Tensor:
    """Training times [B] in (0, 1) (t = 1 noise), drawn as ``cfg`` says."""
    if cfg.time_sampling == "uniform":
        t = torch.rand(batch_size, generator=generator)
    else:
        t = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(batch_size, generator=generator))
    return shift_fixed(t, cfg.time_shift) if cfg.time_shift != 1.0 else t


class _Batches:
    """Draws (x0, cond) batches from the latent and prompt tables."""

    def __init__(self, latents: LatentTable, prompts: PromptTable, cfg: LatentFlowConfig) -> None:
        self.latents, self.cfg = latents, cfg
        self.cond = prompts.cond
        empty = (prompts.labels == -1).nonzero().flatten()
        if empty.numel() != 1 and cfg.prompt_dropout > 0:
            raise ValueError("the prompt table needs exactly one empty-prompt row (label -1) for prompt dropout")
        self.empty = int(empty[0]) if empty.numel() else -1
        rows = [(prompts.labels == d).nonzero().flatten() for d in range(int(latents.labels.max()) + 1)]
        if any(r.numel() == 0 for r in rows):
            raise ValueError("every digit of the latent table needs at least one prompt")
        width = max(r.numel() for r in rows)
        # [num_digits, width] prompt rows per digit, cycled to a common width
        self.rows_by_digit = torch.stack([r.repeat(width // r.numel() + 1)[:width] for r in rows])

    def draw(self, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        b = self.cfg.batch_size
        idx = torch.randint(0, self.latents.labels.shape[0], (b,), generator=generator)
        noise = torch.randn(self.latents.mean[idx].shape, generator=generator)
        x0 = self.latents.mean[idx] + self.latents.std[idx] * noise
        choice = torch.randint(0, self.rows_by_digit.shape[1], (b,), generator=generator)
        rows = self.rows_by_digit[self.latents.labels[idx], choice]
        drop = torch.rand(b, generator=generator) < self.cfg.prompt_dropout
        rows = torch.where(drop, torch.full_like(rows, self.empty), rows)
        return x0, {k: v[rows] for k, v in self.cond.items()}


def train_latent_flow(
    velocity: nn.Module,
    latents: LatentTable,
    prompts: PromptTable,
    cfg: LatentFlowConfig,
    generator: torch.Generator,
    extra_cond: Callable[[int, torch.Generator], dict[str, torch.Tensor]] | None = None,
    progress: bool = True,
) -> nn.Module:
    """Train ``velocity`` in place by flow matching; return its weight EMA (a deep copy, eval mode).

    ``extra_cond(batch_size, generator)`` adds per-row inputs that are not text (e.g. an embedded guidance
    value). Everything runs on the CPU in float32.
    """
    cfg.validate()
    batches = _Batches(latents, prompts, cfg)
    ema = copy.deepcopy(velocity).eval().requires_grad_(False)
    params = [p for p in velocity.parameters() if p.requires_grad]
    ema_params = [p for p, q in zip(ema.parameters(), velocity.parameters()) if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: pretrain_lr_factor(s, cfg))
    velocity.train()
    bar = tqdm(range(cfg.steps), desc="flow matching", disable=not progress, mininterval=10.0)
    for step in bar:
        x0, cond = batches.draw(generator)
        if extra_cond is not None:
            cond.update(extra_cond(x0.shape[0], generator))
        t = draw_times(x0.shape[0], cfg, generator)
        eps = torch.randn(x0.shape, generator=generator)
        loss = (velocity(interpolate(x0, eps, t), t, **cond) - flow_matching_target(x0, eps)).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    velocity.eval()
    return ema
