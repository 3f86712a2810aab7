"""Atomic file writes, safe weight loading, and the image file types scfm reads.

Every file the project writes goes to a temporary name in the same folder and is renamed
into place, so a crash mid-write never leaves a truncated file where a good one was.
Weights are always safetensors, never pickle.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
"""File suffixes read as images (case-insensitive; PIL decodes them all): captioned image folders, FID references."""


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file handle whose content replaces ``path`` (``os.replace`` of a synced temp file in the same
    folder) only when the block ends without an exception; otherwise the temp file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file normal permissions
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file and ``os.replace``; returns the path."""
    with atomic_writer(path) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_save_safetensors(
    tensors: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Save tensors (moved to CPU, made contiguous) as safetensors, atomically."""
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return atomic_write_bytes(path, save(cpu, metadata=dict(metadata) if metadata else None))


def load_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file; a missing or corrupt file raises a ``ValueError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist; check the path")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(
            f"weights file {str(path)!r} is corrupt or not a safetensors file ({err}); "
            "re-create it or point to a good copy"
        ) from err


def save_png(image: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write one image [3, H, W] float in [0, 1] as an 8-bit PNG, atomically."""
    from PIL import Image

    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"save_png expects one image [3, H, W], got shape {tuple(image.shape)}")
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())


def add_safetensors_metadata(path: str | os.PathLike, metadata: Mapping[str, str]) -> Path:
    """Merge ``metadata`` (str -> str) into the header of the safetensors file ``path``, atomically.

    Only the JSON header is rewritten (its ``__metadata__`` entry, padded to 8 bytes); the tensor bytes are copied
    as they are, in 64 MiB chunks, so a multi-GB file costs no RAM. A file that is not safetensors raises
    ``ValueError`` naming it.
    """
    path = Path(path)
    with open(path, "rb") as src:
        size = int.from_bytes(src.read(8), "little")
        try:
            header = json.loads(src.read(size))
        except ValueError as err:
            raise ValueError(f"{str(path)!r} is not a safetensors file ({err})") from err
        header["__metadata__"] = {**header.get("__metadata__", {}), **{str(k): str(v) for k, v in metadata.items()}}
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)
        with atomic_writer(path) as dst:
            dst.write(len(raw).to_bytes(8, "little") + raw)
            while chunk := src.read(64 << 20):
                dst.write(chunk)
    return path
