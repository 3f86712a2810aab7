"""A small class-conditional DiT for 8x8 digits.

``forward(x [B, 1, 8, 8], t [B] in [0, 1], label [B] int64 in 0..9) -> v [B, 1, 8, 8]``.
Patches of 2x2 pixels give 16 tokens; each block is attention + MLP with adaLN-Zero
modulation from the time and class embedding, as in DiT (Peebles & Xie, 2023). The
linear layers carry the names real transformers use (``qkv``, ``proj``, ``fc1``, ``fc2``,
``adaLN``), so LoRA target lists read the same as for Flux or SD3.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from scfm.models.timestep import sinusoidal_embedding


@dataclass
class DigitsDiTConfig:
    image_size: int = 8
    channels: int = 1
    patch: int = 2
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 10
    time_dim: int = 128


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN = nn.Linear(dim, 6 * dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        s1, g1, a1, s2, g2, a2 = self.adaLN(F.silu(c)).chunk(6, dim=-1)
        x = x + a1[:, None, :] * self.attn(_modulate(self.norm1(x), s1, g1))
        return x + a2[:, None, :] * self.mlp(_modulate(self.norm2(x), s2, g2))


class DigitsDiT(nn.Module):
    """Class-conditional velocity model for [B, 1, 8, 8] images in [-1, 1]."""

    def __init__(self, config: DigitsDiTConfig | None = None) -> None:
        super().__init__()
        self.config = config or DigitsDiTConfig()
        c = self.config
        self.grid = c.image_size // c.patch
        patch_dim = c.channels * c.patch * c.patch
        self.patch_in = nn.Linear(patch_dim, c.dim)
        self.pos = nn.Parameter(torch.randn(1, self.grid * self.grid, c.dim) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(c.time_dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))
        self.label_emb = nn.Embedding(c.num_classes, c.dim)
        self.blocks = nn.ModuleList(DiTBlock(c.dim, c.heads, c.mlp_ratio) for _ in range(c.depth))
        self.norm_out = nn.LayerNorm(c.dim, elementwise_affine=False, eps=1e-6)
        self.adaLN_out = nn.Linear(c.dim, 2 * c.dim)
        self.patch_out = nn.Linear(c.dim, patch_dim)
        self.gradient_checkpointing = False
        self._zero_init()

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each block's activations in backward (less memory, one more forward)."""
        self.gradient_checkpointing = True

    def _zero_init(self) -> None:
        for block in self.blocks:
            nn.init.zeros_(block.adaLN.weight)
            nn.init.zeros_(block.adaLN.bias)
        for layer in (self.adaLN_out, self.patch_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _patchify(self, x: torch.Tensor) -> torch.Tensor:
        b, ch, p, g = x.shape[0], self.config.channels, self.config.patch, self.grid
        x = x.view(b, ch, g, p, g, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, g * g, ch * p * p)

    def _unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        b, ch, p, g = tokens.shape[0], self.config.channels, self.config.patch, self.grid
        x = tokens.view(b, g, g, ch, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, ch, g * p, g * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """x [B, 1, 8, 8], t [B] in [0, 1], label [B] int64 -> velocity [B, 1, 8, 8]."""
        c = self.time_mlp(sinusoidal_embedding(t, self.config.time_dim).to(x.dtype)) + self.label_emb(label)
        h = self.patch_in(self._patchify(x)) + self.pos
        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                h = checkpoint(block, h, c, use_reentrant=False)
            else:
                h = block(h, c)
        shift, scale = self.adaLN_out(F.silu(c)).chunk(2, dim=-1)
        return self._unpatchify(self.patch_out(_modulate(self.norm_out(h), shift, scale)))

    def config_dict(self) -> dict:
        return asdict(self.config)
