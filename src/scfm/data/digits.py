"""scikit-learn's 8x8 digits as flow-matching data, with a fixed train / held-out split.

Images are returned as float tensors of shape [N, 1, 8, 8] in [-1, 1] (pixel value v in
0..16 maps to v / 8 - 1) and integer labels of shape [N] in 0..9. The split is stratified
and seeded, so every part of the project (teacher pretraining, the evaluator, the FD floor)
sees the same held-out images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

HELDOUT_FRACTION = 0.2
SPLIT_SEED = 0
NUM_CLASSES = 10
IMAGE_SHAPE = (1, 8, 8)


@dataclass(frozen=True)
class DigitsSplit:
    """Images [N, 1, 8, 8] float32 in [-1, 1] and labels [N] int64 in 0..9."""

    images: torch.Tensor
    labels: torch.Tensor


def _load_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


def load_digits_split(part: str = "train") -> DigitsSplit:
    """Return the ``"train"`` (1437 images), ``"heldout"`` (360) or ``"all"`` (1797) part."""
    if part not in ("train", "heldout", "all"):
        raise ValueError(f"part={part!r} is not a digits split; use 'train', 'heldout' or 'all'")
    images, labels = _load_arrays()
    if part != "all":
        from sklearn.model_selection import train_test_split

        idx = np.arange(len(labels))
        train_idx, held_idx = train_test_split(
            idx, test_size=HELDOUT_FRACTION, random_state=SPLIT_SEED, stratify=labels
        )
        chosen = np.sort(train_idx if part == "train" else held_idx)
        images, labels = images[chosen], labels[chosen]
    x = torch.from_numpy(images / 8.0 - 1.0).unsqueeze(1)
    return DigitsSplit(images=x.contiguous(), labels=torch.from_numpy(labels))


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """Map model-space images in [-1, 1] (any shape) to [0, 1], clamped."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)
