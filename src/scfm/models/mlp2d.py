"""A small velocity MLP for 2-D toy distributions: ``forward(x [B, 2], t [B]) -> v [B, 2]``."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from scfm.models.timestep import sinusoidal_embedding


@dataclass
class MLP2DConfig:
    dim: int = 2
    hidden: int = 128
    depth: int = 3
    time_dim: int = 64


class ResidualBlock(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.time = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        y = self.fc1(self.norm(h)) + self.time(temb)
        return h + self.fc2(torch.nn.functional.silu(y))


class VelocityMLP2D(nn.Module):
    """Velocity model on R^d (d = 2 by default) in the spec's convention (t = 1 is noise)."""

    def __init__(self, config: MLP2DConfig | None = None) -> None:
        super().__init__()
        self.config = config or MLP2DConfig()
        c = self.config
        self.inp = nn.Linear(c.dim, c.hidden)
        self.time_mlp = nn.Sequential(nn.Linear(c.time_dim, c.hidden), nn.SiLU(), nn.Linear(c.hidden, c.hidden))
        self.blocks = nn.ModuleList(ResidualBlock(c.hidden) for _ in range(c.depth))
        self.out_norm = nn.LayerNorm(c.hidden)
        self.out = nn.Linear(c.hidden, c.dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x [B, dim], t [B] in [0, 1] -> velocity [B, dim]."""
        temb = torch.nn.functional.silu(self.time_mlp(sinusoidal_embedding(t, self.config.time_dim)))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, temb)
        return self.out(self.out_norm(h))

    def config_dict(self) -> dict:
        return asdict(self.config)
