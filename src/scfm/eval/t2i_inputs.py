"""Inputs of text-to-image evaluation: the prompt list and a folder of real reference images.

Prompt files are parsed by :func:`scfm.data.cache_inputs.read_prompts` (the same parser as
``scfm generate-data``); reference images come back as [N, 3, H, W] float in [0, 1], resized and
center-cropped to the generated size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from scfm.data.cache_inputs import read_prompts
from scfm.fileio import IMAGE_SUFFIXES

PathLike = str | os.PathLike

PROMPT_KEYS = ("prompt", "caption", "text")
"""Fields a ``.jsonl`` prompt line may hold its prompt in (the first present is used)."""


def load_prompts(path: PathLike, limit: int | None = None) -> list[str]:
    """Prompts from a ``.txt`` file (one per non-blank line) or ``.jsonl`` (objects with ``"prompt"``).

    In ``.jsonl`` the keys ``"caption"`` and ``"text"`` are accepted too; a ``"seed"`` is checked
    but not used (prompt i gets seed ``--seed + i``). Parsed by
    :func:`scfm.data.cache_inputs.read_prompts`. ``limit`` keeps the first ``limit`` prompts.
    Raises ``FileNotFoundError`` / ``ValueError`` naming the file and line for bad content.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"--max-prompts {limit} must be >= 1")
    prompts = [entry.text for entry in read_prompts(path, keys=PROMPT_KEYS)]
    return prompts[:limit] if limit is not None else prompts


def list_reference_images(folder: PathLike) -> list[Path]:
    """Sorted image files (:data:`scfm.fileio.IMAGE_SUFFIXES`) in ``folder`` (not recursive); headers checked only."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"--reference {str(folder)!r} is not a folder; pass a folder of images ({' '.join(IMAGE_SUFFIXES)})"
        )
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise ValueError(
            f"--reference {str(folder)!r} holds {len(files)} .png/.jpg image(s) "
            f"(suffixes read: {' '.join(IMAGE_SUFFIXES)}); FID needs at least 2"
        )
    for p in files:
        try:
            with Image.open(p) as im:
                im.verify()
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"reference image {str(p)!r} cannot be read ({err}); remove or replace it") from err
    return files


def _load_image(path: Path, size: tuple[int, int]) -> Tensor:
    """One image as [3, H, W] float in [0, 1]: resized (bicubic) to cover ``size``, center-cropped."""
    from PIL import Image

    h, w = size
    with Image.open(path) as im:
        im = im.convert("RGB")
        scale = max(h / im.height, w / im.width)
        rh, rw = max(h, round(im.height * scale)), max(w, round(im.width * scale))
        im = im.resize((rw, rh), Image.Resampling.BICUBIC)
        top, left = (rh - h) // 2, (rw - w) // 2
        im = im.crop((left, top, left + w, top + h))
        arr = np.asarray(im, dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0


def _as_size(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else size
    if h < 1 or w < 1:
        raise ValueError(f"size={size} must be positive (H, W)")
    return int(h), int(w)


def iter_reference_folder(folder: PathLike, size: int | tuple[int, int], batch_size: int = 32) -> Iterator[Tensor]:
    """Yield the folder's images in batches [b, 3, H, W] float in [0, 1] (see :func:`load_reference_folder`)."""
    files = list_reference_images(folder)
    hw = _as_size(size)
    for start in range(0, len(files), batch_size):
        yield torch.stack([_load_image(p, hw) for p in files[start : start + batch_size]])


def load_reference_folder(folder: PathLike, size: int | tuple[int, int]) -> Tensor:
    """All images of ``folder`` (sorted by name; :func:`list_reference_images`) as [N, 3, H, W] float in [0, 1].

    Each image is converted to RGB, resized (bicubic) so that it covers ``size`` (an int for
    square, or (H, W)) and center-cropped to it. Needs at least 2 images.
    """
    return torch.cat(list(iter_reference_folder(folder, size)))
