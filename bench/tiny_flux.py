"""A small Flux transformer built from an explicit local config (random weights), for cost
benchmarks on CPU: 2 double + 2 single blocks, width 128, 32x32 latents (256 tokens)."""

from __future__ import annotations

import torch

from scfm.models.flux import FluxAdapter

LATENT_CHANNELS, LATENT_SIZE, TEXT_LEN, TEXT_DIM, POOLED_DIM = 16, 32, 32, 64, 32


def tiny_flux_adapter(device: torch.device, seed: int = 0) -> FluxAdapter:
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * LATENT_CHANNELS,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=32,
        num_attention_heads=4,
        joint_attention_dim=TEXT_DIM,
        pooled_projection_dim=POOLED_DIM,
        guidance_embeds=True,
        axes_dims_rope=(8, 12, 12),
    )
    return FluxAdapter(transformer).to(device).eval()


def flux_batches(batch: int, device: torch.device, seed: int = 0):
    """Random latents, text embeddings and per-sample guidance in U[0, 7.5]."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield {
            "x0": torch.randn(batch, LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE, generator=gen),
            "prompt_embeds": torch.randn(batch, TEXT_LEN, TEXT_DIM, generator=gen),
            "pooled_prompt_embeds": torch.randn(batch, POOLED_DIM, generator=gen),
            "guidance": 7.5 * torch.rand(batch, generator=gen),
        }
