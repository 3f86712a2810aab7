"""Infinite random batches for the built-in datasets, drawn from a passed generator."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from scfm.data.digits import load_digits_split
from scfm.data.toy2d import sample_toy2d


def digits_batches(batch_size: int, generator: torch.Generator, part: str = "train") -> Iterator[dict]:
    """Yield ``{"x0": [B, 1, 8, 8] in [-1, 1], "label": [B] int64}`` sampled with replacement."""
    split = load_digits_split(part)
    n = split.labels.shape[0]
    while True:
        idx = torch.randint(0, n, (batch_size,), generator=generator)
        yield {"x0": split.images[idx], "label": split.labels[idx]}


def toy2d_batches(name: str, batch_size: int, generator: torch.Generator) -> Iterator[dict]:
    """Yield ``{"x0": [B, 2]}`` fresh samples of the toy distribution ``name``."""
    while True:
        yield {"x0": sample_toy2d(name, batch_size, generator)}
