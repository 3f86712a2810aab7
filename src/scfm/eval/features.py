"""A small digits classifier whose penultimate activations are the features for FD.

The classifier plays the role Inception plays for FID: trained once on the digits "train"
split only (never on "heldout"), shipped as ``scfm/assets/digits_classifier.safetensors``
and loaded frozen by the evaluator. Re-create the asset with::

    scfm pretrain --model digits-classifier --out src/scfm/assets/digits_classifier.safetensors --steps 40

Training draws all randomness (weight init, shuffling, shift augmentation) from one
``torch.Generator`` seeded with ``seed``; it never touches the global RNG (modules are
built on the meta device, so even their default init does not run). Given the same
seed and torch build, the weights are bit-identical: training runs on one CPU thread
(faster than several for this tiny net, immune to busy cores, and independent of the
machine's core count); the previous thread count is restored afterwards.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scfm.data.digits import NUM_CLASSES, load_digits_split
from scfm.fileio import atomic_save_safetensors, load_safetensors

FEATURE_DIM = 64
"""Width F of :meth:`DigitsClassifier.features`."""

ASSET_NAME = "digits_classifier.safetensors"
FORMAT_TAG = "scfm.digits_classifier.v1"

_DEFAULT_EPOCHS = 40
_BATCH_SIZE = 64
_LEARNING_RATE = 3e-3
_WEIGHT_DECAY = 1e-4
_TRAIN_THREADS = 1


class DigitsClassifier(nn.Module):
    """CNN for 8x8 digits: 3 conv layers, a 64-wide hidden layer, 10 logits.

    Input: images [N, 1, 8, 8] in [-1, 1] (background is -1).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 4 * 4, FEATURE_DIM)
        self.fc2 = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Re-initialise all weights (Kaiming uniform, zero bias) from ``generator``."""
        for module in (self.conv1, self.conv2, self.conv3, self.fc1, self.fc2):
            nn.init.kaiming_uniform_(module.weight, nonlinearity="relu", generator=generator)
            nn.init.zeros_(module.bias)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations: images [N, 1, 8, 8] in [-1, 1] -> [N, 64], >= 0."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
            raise ValueError(f"x.shape={tuple(x.shape)} is not a batch of digits images; pass [N, 1, 8, 8]")
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        h = F.relu(self.conv3(h))
        return F.relu(self.fc1(h.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        """Logits [N, 10] for images [N, 1, 8, 8] in [-1, 1]."""
        return self.fc2(self.features(x))


def random_shift(x: Tensor, generator: torch.Generator, max_shift: int = 1) -> Tensor:
    """Shift each image [N, C, H, W] by up to ``max_shift`` pixels per axis, filling with -1."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    out = torch.empty_like(x)
    for a in range(2 * max_shift + 1):
        for b in range(2 * max_shift + 1):
            mask = (dy == a) & (dx == b)
            out[mask] = padded[mask, :, a : a + h, b : b + w]
    return out


def _uninitialised_classifier() -> DigitsClassifier:
    """A classifier with allocated but uninitialised weights; the global RNG is not used."""
    with torch.device("meta"):
        model = DigitsClassifier()
    return model.to_empty(device="cpu")


@torch.inference_mode()
def _accuracy(model: DigitsClassifier, images: Tensor, labels: Tensor) -> float:
    model.eval()
    preds = model(images).argmax(dim=1)
    return float((preds == labels).double().mean())


def train_digits_classifier(
    seed: int = 0,
    epochs: int = _DEFAULT_EPOCHS,
    out_path: str | Path | None = None,
) -> tuple[DigitsClassifier, float]:
    """Train the feature classifier on the digits "train" split; score it on "heldout".

    Args:
        seed: seeds the one ``torch.Generator`` used for init, shuffling and augmentation.
        epochs: passes over the 1437 training images (AdamW, cosine learning-rate decay,
            random 1-pixel shifts) on one CPU thread. The default takes about 15 s.
        out_path: if given, the weights are written there atomically as safetensors with
            metadata ``heldout_accuracy``, ``seed``, ``epochs``, ``threads`` and ``format``.

    Returns:
        ``(model, heldout_accuracy)``: the model in eval mode on the CPU and its accuracy
        in [0, 1] on the 360 held-out images.
    """
    if epochs < 1:
        raise ValueError(f"epochs={epochs} must be >= 1")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(_TRAIN_THREADS)
    try:
        return _train(seed, epochs, out_path)
    finally:
        torch.set_num_threads(previous_threads)


def _train(seed: int, epochs: int, out_path: str | Path | None) -> tuple[DigitsClassifier, float]:
    gen = torch.Generator().manual_seed(seed)
    train = load_digits_split("train")
    held = load_digits_split("heldout")

    model = _uninitialised_classifier()
    model.reset_parameters(gen)
    opt = torch.optim.AdamW(model.parameters(), lr=_LEARNING_RATE, weight_decay=_WEIGHT_DECAY)
    n = train.images.shape[0]
    steps_per_epoch = math.ceil(n / _BATCH_SIZE)
    total_steps = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * step / total_steps)))
    for _ in range(epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, _BATCH_SIZE):
            idx = order[start : start + _BATCH_SIZE]
            x = random_shift(train.images[idx], gen)
            loss = F.cross_entropy(model(x), train.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()

    accuracy = _accuracy(model, held.images, held.labels)
    model.eval()
    if out_path is not None:
        metadata = {
            "format": FORMAT_TAG,
            "heldout_accuracy": f"{accuracy:.6f}",
            "seed": str(seed),
            "epochs": str(epochs),
            "threads": str(_TRAIN_THREADS),
        }
        atomic_save_safetensors(model.state_dict(), out_path, metadata=metadata)
    return model, accuracy


def default_asset_path() -> Path:
    """Path of the shipped classifier weights inside the installed ``scfm`` package."""
    return Path(str(resources.files("scfm").joinpath("assets").joinpath(ASSET_NAME)))


def load_digits_classifier(device: str | torch.device = "cpu", path: str | Path | None = None) -> DigitsClassifier:
    """Load the frozen feature classifier (eval mode, ``requires_grad`` False).

    Args:
        device: where to put the model.
        path: weights file; defaults to the shipped ``scfm/assets/digits_classifier.safetensors``.
    """
    path = Path(path) if path is not None else default_asset_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"classifier weights {str(path)!r} do not exist; create them with "
            f"`python -m scfm.eval.features --out {path}`"
        )
    state = load_safetensors(path, device="cpu")
    model = _uninitialised_classifier()
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"weights file {str(path)!r} does not match DigitsClassifier ({err}); "
            "re-create it with `python -m scfm.eval.features --out PATH`"
        ) from err
    model.to(device).eval()
    model.requires_grad_(False)
    return model
