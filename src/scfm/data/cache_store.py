"""The on-disk format of a teacher cache (written by :mod:`scfm.data.cache_writer`, read by
:mod:`scfm.data.cache_batches`).

A cache folder::

    meta.json             model, adapter, mode, steps, guidance, buckets, dtype, seed, scfm version
    index.jsonl           one line per sample: {"id", "prompt", "bucket", "shard", "row", "seed"} (+ "image")
    shared.safetensors    one-row tensors every sample shares (the negative_* embeddings of true-CFG families)
    shards/shard_NNNNN.safetensors
                          "x0" [N, C, h, w] float32 (the adapter's latent convention) and every per-sample
                          cond key of ``Adapter.encode_prompts`` [N, ...] in the text encoders' dtype; one
                          bucket per shard; metadata {"ids": JSON list of the N ids, "bucket": "WxH"}
    previews/<id>.png     optional decoded previews

Determinism and resuming. The sample list is a pure function of the inputs
(:mod:`scfm.data.cache_inputs`): prompt i (0-based, blank lines skipped), bucket b and repeat r
give the id ``p{i:06d}_{WxH}_r{r:02d}`` and the seed (the prompt's own "seed" + r when the jsonl
gives one, else a hash of (base seed, i, bucket, r)); each sample's noise comes from its own CPU
generator. A rerun skips the ids already in the index, so the cache's content does not depend on
where a run was interrupted; prompts appended to the file (or new buckets) extend the cache, while
edited or reordered prompts are refused (their ids would now mean other prompts). Samples whose
prompt or bucket a later run no longer lists stay in the cache and are trained on. A shard is
written to a temp name and renamed; only then are its index lines appended (one write, flush,
fsync). On start, index lines of a missing or partially indexed shard are dropped, and shard
files the index does not reference are deleted, so there are never duplicates or lost samples.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from scfm.fileio import atomic_save_safetensors, atomic_write_text

if TYPE_CHECKING:
    from scfm.data.cache_inputs import Bucket

META_FILE = "meta.json"
INDEX_FILE = "index.jsonl"
SHARED_FILE = "shared.safetensors"
SHARD_DIR = "shards"
PREVIEW_DIR = "previews"
FORMAT = "scfm-teacher-cache"
SHARED_PREFIX = "negative_"
"""cond keys with this prefix have one row shared by all samples (stored once in shared.safetensors)."""
MATCH_KEYS = {
    "model": "model",
    "adapter": "model",
    "mode": "prompts or images",
    "steps": "steps",
    "guidance": "guidance",
    "dtype": "dtype",
    "seed": "seed",
}
"""meta.json fields that must equal this run's settings to extend a cache -> the setting that decides each."""


# ------------------------------------------------------------------------------ index and shards


def model_id(model: str | os.PathLike) -> str:
    """How a model is recorded in meta.json: an existing local folder as its absolute path, a Hub id as is."""
    text = os.fspath(model)
    return os.path.abspath(text) if os.path.isdir(text) else text


def shard_name(number: int) -> str:
    """The file of shard ``number``, relative to the cache folder: ``shards/shard_NNNNN.safetensors``."""
    return f"{SHARD_DIR}/shard_{number:05d}.safetensors"


def shard_number(name: str) -> int:
    """The number of a shard file name (inverse of :func:`shard_name`)."""
    return int(Path(name).stem.split("_")[-1])


def read_shard_ids(path: Path) -> list[str]:
    """The sample ids a shard file holds (its safetensors metadata), [] when unreadable."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return list(json.loads((f.metadata() or {}).get("ids", "[]")))
    except (SafetensorError, OSError, ValueError):
        return []


def read_index(cache_dir: str | os.PathLike) -> tuple[list[dict[str, Any]], bool]:
    """Index entries and whether a torn last line (a crash mid-append) was dropped.

    A malformed line anywhere but last raises ``ValueError`` naming the line.
    """
    path = Path(cache_dir) / INDEX_FILE
    if not path.is_file():
        return [], False
    lines = path.read_text(encoding="utf-8").split("\n")
    entries, torn = [], False
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):  # the last line has no newline: an append was cut short
                torn = True
                continue
            raise ValueError(f"{path}:{number} is corrupt; delete the cache folder and regenerate it") from None
    return entries, torn


def repair_cache(cache_dir: Path) -> list[dict[str, Any]]:
    """Make the index and the shard files agree; return the surviving entries.

    Drops the index lines of a shard whose file is missing or whose ids differ from its lines
    (then deletes the file), deletes shard files and temp files no line references, and
    rewrites the index atomically when it changed.
    """
    entries, changed = read_index(cache_dir)
    by_shard: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in entries:
        by_shard[entry["shard"]].append(entry)
    keep = []
    for shard, rows in by_shard.items():
        file = cache_dir / shard
        if file.is_file() and sorted(read_shard_ids(file)) == sorted(e["id"] for e in rows):
            keep.extend(rows)
        else:
            changed = True
            file.unlink(missing_ok=True)
    ids = [e["id"] for e in keep]
    if len(ids) != len(set(ids)):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(
            f"cache {str(cache_dir)!r}: ids {dup} appear in several shards; "
            "the index is inconsistent, regenerate the cache"
        )
    referenced = {e["shard"] for e in keep}
    shard_dir = cache_dir / SHARD_DIR
    if shard_dir.is_dir():
        for file in shard_dir.iterdir():
            if f"{SHARD_DIR}/{file.name}" not in referenced:
                file.unlink()  # written but never indexed (crash before the append), or a temp file
    if changed:
        atomic_write_text(cache_dir / INDEX_FILE, "".join(json.dumps(e) + "\n" for e in keep))
    return keep


def write_shard(cache_dir: Path, number: int, tensors: dict[str, torch.Tensor], ids: list[str], bucket: Bucket) -> str:
    """Write one shard atomically; returns its name relative to the cache folder."""
    name = shard_name(number)
    atomic_save_safetensors(
        tensors, cache_dir / name, metadata={"format": FORMAT, "ids": json.dumps(ids), "bucket": bucket.name}
    )
    return name


def append_index(cache_dir: Path, entries: list[dict[str, Any]]) -> None:
    """Append index lines in one write, flushed and fsynced (after the shard they name is in place)."""
    with open(cache_dir / INDEX_FILE, "a", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(e) + "\n" for e in entries))
        handle.flush()
        os.fsync(handle.fileno())


# ------------------------------------------------------------------------------ meta


def read_meta(cache_dir: str | os.PathLike) -> dict[str, Any]:
    """meta.json of a cache; ``FileNotFoundError`` when the folder is not a teacher cache."""
    path = Path(cache_dir) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(cache_dir)!r} is not a teacher cache (no {META_FILE}); "
            f"make one with scfm generate-data --out {cache_dir}"
        )
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a scfm teacher cache meta file (format {meta.get('format')!r})")
    return meta


def check_meta(cache_dir: Path, meta: dict[str, Any]) -> None:
    """Raise when the cache at ``cache_dir`` was made with other settings than ``meta`` (this run's meta.json).

    The message names the field, both values and the two fixes: another output folder, or the
    setting (:data:`MATCH_KEYS`) changed back to the cache's value.
    """
    if not (cache_dir / META_FILE).is_file():
        return
    old = read_meta(cache_dir)
    for key, setting in MATCH_KEYS.items():
        if old.get(key) != meta.get(key):
            fix = f"set {key}={old.get(key)!r}" if setting == key else f"set {setting} to match the cache's {key}"
            raise ValueError(
                f"cache {str(cache_dir)!r} was made with {key}={old.get(key)!r}, "
                f"this run asks for {key}={meta.get(key)!r}: write to a new out folder, or {fix} to extend it"
            )
