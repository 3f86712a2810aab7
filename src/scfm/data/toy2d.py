"""2-D toy distributions for the built-in MLP flow-matching demos.

Every sampler draws from a passed ``torch.Generator`` (never the global RNG), so the same
seed gives the same points. Samples are float32 of shape [n, 2], roughly unit scale: all
distributions stay within [-4, 4] (the Gaussian mixtures up to negligible tail mass).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


def _uniform(n: int, generator: torch.Generator) -> Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64)


def _normal(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    return torch.randn(shape, generator=generator, dtype=torch.float64)


def _checkerboard(n: int, generator: torch.Generator) -> Tensor:
    """4x4 checkerboard on [-2, 2]^2: the 8 cells whose (row + column) index is even."""
    x1 = _uniform(n, generator) * 4.0 - 2.0
    col = torch.floor(x1)  # -2..1
    offset = _uniform(n, generator) + 2.0 * torch.randint(0, 2, (n,), generator=generator)
    # Pick the row so that (col + row) is even: rows -2 or 0 when col is even, else -1 or 1.
    x2 = offset - 2.0 + torch.remainder(col, 2.0)
    return torch.stack([x1, x2], dim=1)


def _eight_gaussians(n: int, generator: torch.Generator) -> Tensor:
    """Eight Gaussians (std 0.2) at radius 2 on the unit directions k * 45 degrees."""
    k = torch.randint(0, 8, (n,), generator=generator).to(torch.float64)
    angle = k * (math.pi / 4.0)
    centers = 2.0 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return centers + 0.2 * _normal((n, 2), generator)


def _moons(n: int, generator: torch.Generator) -> Tensor:
    """Two interleaving half circles (like sklearn's make_moons, noise 0.1), centred, x1.5."""
    upper = torch.randint(0, 2, (n,), generator=generator).bool()
    theta = _uniform(n, generator) * math.pi
    x = torch.where(upper, torch.cos(theta), 1.0 - torch.cos(theta))
    y = torch.where(upper, torch.sin(theta), 0.5 - torch.sin(theta))
    pts = torch.stack([x - 0.5, y - 0.25], dim=1) + 0.1 * _normal((n, 2), generator)
    return 1.5 * pts


def _spirals(n: int, generator: torch.Generator) -> Tensor:
    """Two interleaved Archimedean spirals (radius up to 3) with 0.1 Gaussian noise."""
    arm = torch.randint(0, 2, (n,), generator=generator).to(torch.float64)
    s = torch.sqrt(_uniform(n, generator))  # denser toward the outside, uniform along length
    angle = s * 3.0 * math.pi + arm * math.pi
    radius = 3.0 * s
    pts = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    return pts + 0.1 * _normal((n, 2), generator)


def _rings(n: int, generator: torch.Generator) -> Tensor:
    """Three concentric rings (radii 1, 2, 3; points proportional to radius), noise 0.08."""
    u = _uniform(n, generator)
    radius = torch.where(u < 1 / 6, 1.0, torch.where(u < 3 / 6, 2.0, 3.0)).to(torch.float64)
    angle = _uniform(n, generator) * (2.0 * math.pi)
    pts = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    return pts + 0.08 * _normal((n, 2), generator)


_SAMPLERS: dict[str, Callable[[int, torch.Generator], Tensor]] = {
    "checkerboard": _checkerboard,
    "8gaussians": _eight_gaussians,
    "moons": _moons,
    "spirals": _spirals,
    "rings": _rings,
}

TOY2D_NAMES: tuple[str, ...] = tuple(_SAMPLERS)
"""Names accepted by :func:`sample_toy2d`."""


def sample_toy2d(name: str, n: int, generator: torch.Generator) -> Tensor:
    """Draw ``n`` points from the 2-D toy distribution ``name``.

    Args:
        name: one of :data:`TOY2D_NAMES`.
        n: number of points, >= 0.
        generator: a CPU ``torch.Generator``; the only source of randomness.

    Returns:
        Tensor [n, 2] float32 on the CPU, roughly unit scale (within [-4, 4]).
    """
    if name not in _SAMPLERS:
        raise ValueError(f"name={name!r} is not a toy 2-D distribution; use one of {TOY2D_NAMES}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n={n!r} must be a non-negative int number of points")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator={generator!r} must be a torch.Generator; pass torch.Generator().manual_seed(seed)")
    return _SAMPLERS[name](n, generator).to(torch.float32).contiguous()
