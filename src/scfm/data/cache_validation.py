"""The validation prompts of a teacher cache: their conditioning, stored once, for validation images.

``scfm generate-data --validation-prompts`` encodes a few prompts with the adapter's own
``encode_prompts`` (the hook the training samples go through, negative rows of true-CFG
families included) and stores the result in the cache, so that a distillation run can show
teacher-vs-student images every ``validate_every`` steps without building a text encoder. Two
parts, written in this order (each atomically), so a crash leaves either no validation set or
a whole one:

    validation.safetensors   every cond key of ``encode_prompts``: per-prompt keys [P, ...] and the
                             shared ``negative_*`` keys [1, ...], in the text encoders' dtype;
                             metadata {"format", "prompts": JSON list}
    meta.json "validation"   {"prompts": [P texts], "seeds": [P ints], "bucket": "WxH"}

The noise of prompt i is ``torch.randn(latent shape, generator=torch.Generator().manual_seed(seeds[i]))``
on the CPU, the latent shape that of the cache's samples in ``bucket`` (the first bucket the
cache was generated with): :func:`validation_noise`. Seeds come from a .jsonl prompt's "seed",
else from a hash of (the cache's seed, "validation", i). Replacing the validation prompts never
touches the training samples.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scfm.data.cache_inputs import PromptEntry, derived_seed, read_prompts
from scfm.data.cache_store import FORMAT, META_FILE, SHARED_PREFIX, read_meta, read_shard_header
from scfm.fileio import atomic_save_safetensors, atomic_write_json, load_safetensors

VALIDATION_FILE = "validation.safetensors"
"""The file of the validation prompts' conditioning, in the cache folder."""
META_KEY = "validation"
"""The meta.json entry describing the validation set (prompts, seeds, bucket)."""
ADD_HINT = (
    "add them with scfm generate-data --validation-prompts FILE_OR_TEXT (the command that made the cache, "
    "plus that flag: it encodes the prompts into the existing cache without regenerating its samples)"
)
"""How to give a cache validation prompts (the fix error messages propose)."""


@dataclass(frozen=True)
class ValidationSet:
    """What a cache's validation images show: prompt i with the noise of ``seeds[i]``, in bucket ``bucket``."""

    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    bucket: str
    """``"WIDTHxHEIGHT"``: the cache bucket whose latent shape the noise takes."""

    def to_meta(self) -> dict[str, Any]:
        """The meta.json entry :data:`META_KEY`."""
        return {"prompts": list(self.prompts), "seeds": list(self.seeds), "bucket": self.bucket}

    @classmethod
    def from_meta(cls, entry: Any, where: str) -> ValidationSet:
        """The set a meta.json entry describes; ``ValueError`` naming ``where`` when it is malformed."""
        ok = isinstance(entry, dict) and isinstance(entry.get("bucket"), str)
        prompts, seeds = (entry.get("prompts"), entry.get("seeds")) if ok else (None, None)
        ok = ok and isinstance(prompts, list) and isinstance(seeds, list) and len(prompts) == len(seeds) > 0
        ok = ok and all(isinstance(p, str) for p in prompts)
        ok = ok and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
        if not ok:
            raise ValueError(
                f"{where}: {META_KEY}={entry!r} is not a validation set "
                f'({{"prompts": [texts], "seeds": [ints], "bucket": "WxH"}}); {ADD_HINT}'
            )
        return cls(tuple(prompts), tuple(seeds), entry["bucket"])


def validation_prompt_entries(source: str | os.PathLike | Sequence[str] | None) -> list[PromptEntry]:
    """The validation prompts ``source`` names: a prompt file (a path: .txt one a line, or .jsonl with
    "prompt" and optional "seed", read by :func:`scfm.data.cache_inputs.read_prompts`), or a list of
    prompt texts; [] for None. Raises ``ValueError`` / ``FileNotFoundError`` naming the problem."""
    if source is None:
        return []
    if isinstance(source, (str, os.PathLike)):
        return read_prompts(source)
    texts = list(source)
    if not texts:
        raise ValueError("validation_prompts=[] is empty: give a prompt file or at least one prompt text")
    entries = []
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"validation_prompts[{i}]={text!r} must be a non-empty prompt text")
        entries.append(PromptEntry(text.strip(), None, i + 1))
    return entries


def plan_validation(entries: Sequence[PromptEntry], bucket: str, seed: int) -> ValidationSet:
    """The validation set of ``entries`` (a .jsonl "seed" is kept, else a hash of (seed, "validation", i))."""
    seeds = [e.seed if e.seed is not None else derived_seed(seed, "validation", i) for i, e in enumerate(entries)]
    return ValidationSet(tuple(e.text for e in entries), tuple(seeds), bucket)


def stored_validation(cache_dir: str | os.PathLike) -> ValidationSet | None:
    """The validation set meta.json describes, or None when the cache has none (or no meta.json yet)."""
    path = Path(cache_dir) / META_FILE
    if not path.is_file():
        return None
    entry = read_meta(cache_dir).get(META_KEY)
    return None if entry is None else ValidationSet.from_meta(entry, str(path))


def write_validation(cache_dir: str | os.PathLike, vset: ValidationSet, cond: dict[str, torch.Tensor]) -> Path:
    """Store ``cond`` (``encode_prompts`` of ``vset.prompts``) and ``vset`` in the cache; returns the file.

    meta.json first loses its old entry, then the tensors are written, then meta.json gets the new
    entry (each write atomic), so the entry never describes another set's tensors. Per-prompt keys
    must have one row per prompt, ``negative_*`` keys one row; ``ValueError`` otherwise.
    """
    cache_dir = Path(cache_dir)
    rows = len(vset.prompts)
    for key, value in cond.items():
        want = 1 if key.startswith(SHARED_PREFIX) else rows
        if value.shape[0] != want:
            raise ValueError(
                f"encode_prompts returned {key!r} with {value.shape[0]} rows for {rows} validation prompts; "
                f"expected {want}"
            )
    meta = read_meta(cache_dir)
    if META_KEY in meta:
        atomic_write_json(cache_dir / META_FILE, {k: v for k, v in meta.items() if k != META_KEY})
    tensors = {key: value.detach().cpu().contiguous() for key, value in cond.items()}
    path = atomic_save_safetensors(
        tensors, cache_dir / VALIDATION_FILE, metadata={"format": FORMAT, "prompts": json.dumps(list(vset.prompts))}
    )
    atomic_write_json(cache_dir / META_FILE, {**meta, META_KEY: vset.to_meta()})
    return path


def _validation_file(cache_dir: Path) -> Path:
    """The cache's validation file, checked to be a file inside the cache (not a link out of it)."""
    path = cache_dir / VALIDATION_FILE
    if not path.is_file():
        raise ValueError(
            f"teacher cache {str(cache_dir)!r} lists validation prompts in {META_FILE} but has no "
            f"{VALIDATION_FILE}; {ADD_HINT}"
        )
    if not path.resolve().is_relative_to(cache_dir.resolve()):
        raise ValueError(
            f"{str(path)!r} links to {str(path.resolve())!r}, outside the cache; {ADD_HINT} (into a new cache folder)"
        )
    return path


def check_validation(
    cache_dir: str | os.PathLike, latent_shapes: dict[str, tuple[int, ...]], asked_by: str = "validation"
) -> ValidationSet:
    """Raise ``ValueError`` unless the cache holds a usable validation set; returns it.

    Reads meta.json and the validation file's header only: the set must exist (the message names
    ``asked_by``, e.g. ``"validate_every=100"``, and how to add prompts), its file must lie in the
    cache and list the same prompts, and its bucket must have samples in the cache
    (``latent_shapes``: bucket -> x0 shape of the cache's samples).
    """
    cache_dir = Path(cache_dir)
    vset = stored_validation(cache_dir)
    if vset is None:
        off = f", or set {asked_by.partition('=')[0]} to 0" if "=" in asked_by else ""
        raise ValueError(
            f"{asked_by} needs validation prompts, but teacher cache {str(cache_dir)!r} has none: {ADD_HINT}{off}"
        )
    _, metadata = read_shard_header(_validation_file(cache_dir))
    if json.loads(metadata.get("prompts", "[]")) != list(vset.prompts):
        raise ValueError(
            f"{VALIDATION_FILE} of teacher cache {str(cache_dir)!r} holds other prompts than its {META_FILE} lists; "
            f"{ADD_HINT}"
        )
    if vset.bucket not in latent_shapes:
        raise ValueError(
            f"the validation prompts of teacher cache {str(cache_dir)!r} are for bucket {vset.bucket}, which has no "
            f"samples in the cache (buckets with samples: {sorted(latent_shapes)}); generate samples in that bucket "
            "or add the validation prompts again with the first --buckets entry set to one of those"
        )
    return vset


def read_validation(cache_dir: str | os.PathLike) -> tuple[ValidationSet, dict[str, torch.Tensor]]:
    """(the validation set, its conditioning: per-prompt keys [P, ...], ``negative_*`` keys [1, ...]) on the CPU."""
    cache_dir = Path(cache_dir)
    vset = stored_validation(cache_dir)
    if vset is None:
        raise ValueError(f"teacher cache {str(cache_dir)!r} has no validation prompts; {ADD_HINT}")
    return vset, load_safetensors(_validation_file(cache_dir))


def validation_noise(seeds: Sequence[int], latent_shape: Sequence[int]) -> torch.Tensor:
    """Noise [P, *latent_shape] float32 on the CPU: row i from its own generator seeded ``seeds[i]``."""
    return torch.stack([torch.randn(tuple(latent_shape), generator=torch.Generator().manual_seed(s)) for s in seeds])
