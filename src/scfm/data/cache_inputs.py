"""What the samples of a teacher cache are: buckets, prompts, captioned images and the sample plan.

The plan is a pure function of the inputs: ids and seeds as described in :mod:`scfm.data.cache_store`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scfm.fileio import IMAGE_SUFFIXES

# ------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class Bucket:
    """An image size in pixels (one latent shape of the cache)."""

    width: int
    height: int

    @property
    def name(self) -> str:
        """``"WIDTHxHEIGHT"``, e.g. ``"768x512"`` (how buckets are written in ids, the index and meta.json)."""
        return f"{self.width}x{self.height}"


def parse_buckets(text: str | Sequence[str]) -> tuple[Bucket, ...]:
    """``"512x512,768x512"`` (WIDTHxHEIGHT, comma separated) -> buckets, duplicates removed."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[Bucket] = []
    for item in (i.strip() for i in items):
        w, sep, h = item.lower().partition("x")
        if not sep or not w.isdigit() or not h.isdigit() or int(w) < 1 or int(h) < 1:
            raise ValueError(f"bucket {item!r} is not WIDTHxHEIGHT in pixels (for example '512x512,768x512')")
        bucket = Bucket(int(w), int(h))
        if bucket not in out:
            out.append(bucket)
    if not out:
        raise ValueError("buckets is empty; give at least one WIDTHxHEIGHT (for example '512x512')")
    return tuple(out)


def check_buckets(buckets: Sequence[Bucket], multiple: int | None, model: str) -> None:
    """Raise if a side is not a multiple of ``multiple`` (VAE downsampling x patch), naming the nearest fit.

    ``multiple`` None or 0: any size is accepted. ``model`` only names the model in the message.
    """
    if not multiple:
        return
    for b in buckets:
        if b.width % multiple or b.height % multiple:
            w, h = (max(multiple, round(side / multiple) * multiple) for side in (b.width, b.height))
            raise ValueError(
                f"bucket {b.name}: {model} needs width and height divisible by {multiple} "
                f"(VAE downsampling x patch size); use e.g. {w}x{h}"
            )


@dataclass(frozen=True)
class PromptEntry:
    """One prompt; ``seed`` from the jsonl (None: derived), ``line`` its 1-based line number."""

    text: str
    seed: int | None
    line: int


def read_prompts(path: str | os.PathLike, keys: Sequence[str] = ("prompt",)) -> list[PromptEntry]:
    """Read a ``.txt`` (one prompt a line) or ``.jsonl`` (``{"prompt": ..., "seed": optional int}``) file.

    The one prompt-file parser of scfm (``generate-data`` and ``eval``). Blank lines are skipped.
    ``keys``: the jsonl fields that may hold the prompt, the first present one is used (``scfm
    eval`` also accepts "caption" and "text"). Raises ``FileNotFoundError`` / ``ValueError``
    naming the file and the line for a missing file, an empty file, or a malformed jsonl line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"prompt file {str(path)!r} does not exist; give a .txt (one prompt per line) or .jsonl file"
        )
    entries: list[PromptEntry] = []
    jsonl = path.suffix.lower() == ".jsonl"
    names = [f'"{k}"' for k in keys]
    fields = names[0] + (
        f" (or {' / '.join(names[1:])})" if len(names) > 1 else ""
    )  # '"prompt" (or "caption" / "text")'
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if not jsonl:
            entries.append(PromptEntry(line, None, number))
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(
                f'{path}:{number}: not valid JSON ({err.msg}); each line must be like {{"prompt": "a cat", "seed": 3}}'
            ) from None
        text = next((item[k] for k in keys if k in item), None) if isinstance(item, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{path}:{number}: needs a non-empty string field {fields} (got {line[:80]!r})")
        seed = item.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
            raise ValueError(f'{path}:{number}: "seed" must be a non-negative integer, got {seed!r}')
        entries.append(PromptEntry(text.strip(), seed, number))
    if not entries:
        raise ValueError(f"prompt file {str(path)!r} holds no prompt (only blank lines)")
    return entries


def list_image_pairs(folder: str | os.PathLike) -> list[tuple[Path, str]]:
    """(image, caption) pairs of a folder: every image file with a same-stem ``.txt`` caption, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise ValueError(f"image folder {str(folder)!r} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    stems = [p.stem for p in images]
    clashes = sorted({p.name for p in images if stems.count(p.stem) > 1})
    if clashes:
        raise ValueError(
            f"images {clashes[:4]} in {str(folder)!r} share a file stem, "
            "so they would share a caption and a sample id; rename them"
        )
    missing = [p.name for p in images if not p.with_suffix(".txt").is_file()]
    if missing:
        raise ValueError(
            f"image(s) {missing[:5]} in {str(folder)!r} have no caption: add a same-stem .txt file "
            f"(e.g. {Path(missing[0]).stem}.txt) holding the prompt"
        )
    pairs = []
    for p in images:
        caption = p.with_suffix(".txt").read_text(encoding="utf-8").strip()
        if not caption:
            raise ValueError(f"caption file {str(p.with_suffix('.txt'))!r} is empty")
        pairs.append((p, caption))
    return pairs


# ------------------------------------------------------------------------------ the sample plan


@dataclass(frozen=True)
class SampleSpec:
    """One cache sample: deterministic id and seed, its prompt and bucket (and source image)."""

    id: str
    prompt: str
    bucket: Bucket
    seed: int
    image: str | None = None


def derived_seed(*parts: Any) -> int:
    """A seed in [0, 2**63) from a hash of ``parts`` (stable across runs and platforms)."""
    digest = hashlib.sha256(json.dumps(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def plan_prompt_samples(
    prompts: Sequence[PromptEntry], buckets: Sequence[Bucket], per_prompt: int, seed: int
) -> list[SampleSpec]:
    """Every (bucket, prompt, repeat) sample, bucket-major; ids and seeds as in :mod:`scfm.data.cache_store`."""
    specs = []
    for bucket in buckets:
        for i, entry in enumerate(prompts):
            for r in range(per_prompt):
                s = entry.seed + r if entry.seed is not None else derived_seed(seed, i, bucket.name, r)
                specs.append(SampleSpec(f"p{i:06d}_{bucket.name}_r{r:02d}", entry.text, bucket, s))
    return specs


def nearest_bucket(width: int, height: int, buckets: Sequence[Bucket]) -> Bucket:
    """The bucket whose aspect ratio is closest to width/height (in log ratio); ties: first listed."""
    return min(buckets, key=lambda b: abs(math.log(width / height) - math.log(b.width / b.height)))


def plan_image_samples(pairs: Sequence[tuple[Path, str]], buckets: Sequence[Bucket], seed: int) -> list[SampleSpec]:
    """One sample per captioned image, in its nearest bucket; id ``img_<stem>``, seed a hash of (seed, stem)."""
    from PIL import Image

    specs = []
    for path, caption in pairs:
        try:
            with Image.open(path) as im:
                size = im.size
        except OSError as err:
            raise ValueError(f"image {str(path)!r} cannot be read: {err}") from None
        specs.append(
            SampleSpec(
                f"img_{path.stem}", caption, nearest_bucket(*size, buckets), derived_seed(seed, path.stem), path.name
            )
        )
    return specs


def load_image(path: str | os.PathLike, bucket: Bucket) -> torch.Tensor:
    """An image resized to cover ``bucket`` and center-cropped to it: [3, H, W] float32 in [-1, 1]."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        scale = max(bucket.width / im.width, bucket.height / im.height)
        w, h = max(bucket.width, round(im.width * scale)), max(bucket.height, round(im.height * scale))
        im = im.resize((w, h), Image.BICUBIC)
        left, top = (w - bucket.width) // 2, (h - bucket.height) // 2
        im = im.crop((left, top, left + bucket.width, top + bucket.height))
        array = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
