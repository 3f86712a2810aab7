"""Infinite random batches for the built-in datasets, drawn from their own generator.

Each source has ``state_dict`` / ``load_state_dict`` (its generator state), so a resumed
run continues the exact same batch sequence.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from scfm.data.digits import load_digits_split
from scfm.data.toy2d import TOY2D_NAMES, sample_toy2d


class GeneratorSource:
    """Base for sources whose whole state is one CPU ``torch.Generator``."""

    def __init__(self, batch_size: int, seed: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be a positive integer")
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[dict]:
        while True:
            yield self.next_batch()

    def next_batch(self) -> dict:
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])


class DigitsBatches(GeneratorSource):
    """``{"x0": [B, 1, 8, 8] in [-1, 1], "label": [B] int64}`` sampled with replacement."""

    def __init__(self, batch_size: int, seed: int = 0, part: str = "train") -> None:
        super().__init__(batch_size, seed)
        split = load_digits_split(part)
        self.images, self.labels = split.images, split.labels

    def next_batch(self) -> dict:
        idx = torch.randint(0, self.labels.shape[0], (self.batch_size,), generator=self.generator)
        return {"x0": self.images[idx], "label": self.labels[idx]}


class Toy2DBatches(GeneratorSource):
    """``{"x0": [B, 2]}`` fresh samples of the toy distribution ``name``."""

    def __init__(self, name: str, batch_size: int, seed: int = 0) -> None:
        if name not in TOY2D_NAMES:
            raise ValueError(f"toy distribution {name!r} is unknown; choose one of {TOY2D_NAMES}")
        super().__init__(batch_size, seed)
        self.name = name

    def next_batch(self) -> dict:
        return {"x0": sample_toy2d(self.name, self.batch_size, self.generator)}


def digits_batches(batch_size: int, generator: torch.Generator, part: str = "train") -> Iterator[dict]:
    """Yield digits batches drawn from an existing ``generator`` (used by pretraining)."""
    split = load_digits_split(part)
    n = split.labels.shape[0]
    while True:
        idx = torch.randint(0, n, (batch_size,), generator=generator)
        yield {"x0": split.images[idx], "label": split.labels[idx]}


def toy2d_batches(name: str, batch_size: int, generator: torch.Generator) -> Iterator[dict]:
    """Yield ``{"x0": [B, 2]}`` samples drawn from an existing ``generator``."""
    while True:
        yield {"x0": sample_toy2d(name, batch_size, generator)}
