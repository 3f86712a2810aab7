"""Train a diffusers ``AutoencoderKL`` on small images: reconstruction MSE plus a weighted KL term.

The autoencoder is any module with diffusers' VAE interface (``encode(x).latent_dist`` with
``sample(generator)``, ``mean``, ``logvar``; ``decode(z).sample``). Images are [N, 3, H, W] in
[-1, 1]. After training, :func:`latent_statistics` gives the mean and standard deviation of
posterior samples, from which a pipeline's ``shift_factor`` and ``scaling_factor`` are set so
that the transformer sees ``(z - shift) * scale`` with zero mean and unit variance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from scfm.train.pretrain import pretrain_lr_factor


@dataclass
class VaeTrainConfig:
    steps: int = 3000
    """Optimizer steps."""
    batch_size: int = 128
    lr: float = 2e-3
    """AdamW learning rate (linear warm-up, then cosine decay to 10%)."""
    weight_decay: float = 0.0
    warmup: int = 100
    grad_clip: float = 1.0
    kl_weight: float = 1e-3
    """Weight of the KL term (mean over latent elements) against the pixel MSE (mean over pixel values)."""


def vae_losses(vae: nn.Module, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixel MSE, KL per latent element) of one batch [B, 3, H, W], posterior sampled with ``generator``."""
    dist = vae.encode(images).latent_dist
    z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=generator).to(dist.mean)
    recon = vae.decode(z).sample
    kl = 0.5 * (dist.mean.square() + dist.var - 1.0 - dist.logvar)
    return (recon - images).square().mean(), kl.mean()


def train_autoencoder(
    vae: nn.Module, images: torch.Tensor, cfg: VaeTrainConfig, generator: torch.Generator, progress: bool = True
) -> nn.Module:
    """Train ``vae`` in place on ``images`` [N, 3, H, W] in [-1, 1] (batches drawn with replacement); return it in
    eval mode. All randomness (batches, posterior samples) comes from ``generator``."""
    device = next(vae.parameters()).device
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: pretrain_lr_factor(s, cfg))
    vae.train()
    bar = tqdm(range(cfg.steps), desc="vae", disable=not progress, mininterval=10.0)
    for _ in bar:
        idx = torch.randint(0, images.shape[0], (cfg.batch_size,), generator=generator)
        mse, kl = vae_losses(vae, images[idx].to(device), generator)
        loss = mse + cfg.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        bar.set_postfix(mse=f"{mse.item():.4f}", kl=f"{kl.item():.3f}", refresh=False)
    return vae.eval()


@torch.no_grad()
def encode_posteriors(vae: nn.Module, images: torch.Tensor, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and standard deviation, each [N, C, h, w] float32 on the CPU, of images [N, 3, H, W]."""
    device = next(vae.parameters()).device
    means, stds = [], []
    for start in range(0, images.shape[0], batch_size):
        dist = vae.encode(images[start : start + batch_size].to(device)).latent_dist
        means.append(dist.mean.float().cpu())
        stds.append(dist.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def latent_statistics(mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator) -> tuple[float, float]:
    """(shift, scale): the mean and 1 / standard deviation over all elements of posterior samples
    ``mean + std * noise`` ([N, C, h, w]); ``(z - shift) * scale`` then has zero mean and unit variance."""
    z = mean + std * torch.randn(mean.shape, generator=generator)
    return float(z.mean()), float(1.0 / z.std())


@torch.no_grad()
def reconstruct(vae: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Decode the posterior means of ``images`` [N, 3, H, W]: reconstructions [N, 3, H, W] float32 on the CPU."""
    device = next(vae.parameters()).device
    out = []
    for start in range(0, images.shape[0], batch_size):
        dist = vae.encode(images[start : start + batch_size].to(device)).latent_dist
        out.append(vae.decode(dist.mean).sample.float().cpu())
    return torch.cat(out)


def set_latent_normalization(vae: nn.Module, shift: float, scale: float) -> None:
    """Write ``shift_factor`` and ``scaling_factor`` into the VAE's config (saved with it)."""
    vae.register_to_config(shift_factor=float(shift), scaling_factor=float(scale))


@torch.no_grad()
def normalized_posteriors(vae: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std [N, C, h, w] of ``images`` in the transformer's normalization
    ``(z - shift_factor) * scaling_factor`` (the pipelines' convention)."""
    mean, std = encode_posteriors(vae, images)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    scale = vae.config.scaling_factor
    return (mean - shift) * scale, std * scale
