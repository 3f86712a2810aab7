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
    validation.safetensors
                          optional: the conditioning of the validation prompts (meta.json "validation"
                          lists them with their noise seeds; :mod:`scfm.data.cache_validation`)

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

Safety. A folder is a cache only when its meta.json carries the format tag :data:`FORMAT`; a
folder with other files is never written into or repaired. Every index line is checked when it
is read (:func:`read_index`): its "shard" must be one of the cache's own shard names
(``shards/shard_NNNNN.safetensors``) and, with symlinks resolved, lie inside the cache's
``shards/`` folder; a line naming anything else (``..``, an absolute path, a symlink out of the
folder) is refused before any file is deleted or loaded. Repair deletes only files of the cache's
own naming scheme in ``shards/`` (a shard, or the temp file of an interrupted shard write).
meta.json holds no path that is opened (its "model" is only compared with the run's model).
"""

from __future__ import annotations

import json
import os
import re
import struct
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
SHARD_FILE_PATTERN = re.compile(r"shard_[0-9]{5,}\.safetensors")
"""Names of the shard files a cache writes in ``shards/`` (:func:`shard_name`)."""
SHARD_TEMP_PATTERN = re.compile(r"\.shard_[0-9]{5,}\.safetensors\.[A-Za-z0-9_]+\.tmp")
"""Temp files of an interrupted shard write (``.<name>.<random>.tmp``, see :func:`scfm.fileio.atomic_write_bytes`)."""
INDEX_FIELDS: dict[str, type] = {"id": str, "prompt": str, "bucket": str, "shard": str, "row": int, "seed": int}
"""Fields every index line carries, with their types ("image" is optional: image mode)."""
INDEX_FIX = "delete that line (scfm generate-data regenerates its samples) or regenerate the cache in a new folder"
"""The fix an error about a bad index line proposes."""


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


def shard_path(cache_dir: str | os.PathLike, name: Any, where: str) -> Path:
    """The file of the shard an index line names, checked to be one of this cache's own shard files.

    ``name`` must be ``shards/shard_NNNNN.safetensors`` (:func:`shard_name`) and the file, with
    symlinks resolved, must lie in ``cache_dir/shards``. Anything else (``..``, an absolute path, a
    link out of the folder) raises ``ValueError`` naming ``where`` (the index line), so no file
    outside the cache is ever opened or deleted because of what an index says.
    """
    folder, _, file = name.partition("/") if isinstance(name, str) else ("", "", "")
    if folder != SHARD_DIR or not SHARD_FILE_PATTERN.fullmatch(file):
        raise ValueError(
            f"{where}: shard {name!r} is not a shard file of this cache "
            f"({SHARD_DIR}/shard_NNNNN.safetensors inside the cache folder); {INDEX_FIX}"
        )
    path = Path(cache_dir) / name
    inside = Path(cache_dir).resolve() / SHARD_DIR
    if not path.resolve().is_relative_to(inside):
        raise ValueError(
            f"{where}: shard {name!r} resolves to {str(path.resolve())!r}, outside {str(inside)!r} "
            f"(a symlink out of the cache); {INDEX_FIX}"
        )
    return path


def shards_dir(cache_dir: str | os.PathLike) -> Path:
    """The cache's ``shards/`` folder; ``ValueError`` when it is a symlink (its files would lie outside the cache)."""
    folder = Path(cache_dir) / SHARD_DIR
    if folder.is_symlink():
        raise ValueError(
            f"{str(folder)!r} is a link to {str(folder.resolve())!r}; a cache's shards must lie inside the cache "
            "folder: regenerate the cache in a new folder"
        )
    return folder


def check_entry(cache_dir: str | os.PathLike, entry: Any, where: str, checked: set[str] | None = None) -> None:
    """Raise ``ValueError`` naming ``where`` unless ``entry`` is a well-formed index line of this cache.

    It must be a JSON object with the :data:`INDEX_FIELDS` of their types, a row >= 0, and a
    "shard" that :func:`shard_path` accepts. ``checked``: shard names already accepted (skipped,
    and extended), so that a long index resolves each shard's path once.
    """
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: {entry!r} is not an index entry (a JSON object); {INDEX_FIX}")
    for key, kind in INDEX_FIELDS.items():
        value = entry.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            kind_name = "an integer" if kind is int else "a string"
            raise ValueError(f"{where}: {key}={value!r} must be {kind_name}; {INDEX_FIX}")
    if entry["row"] < 0:
        raise ValueError(f"{where}: row={entry['row']} must be >= 0; {INDEX_FIX}")
    if checked is None or entry["shard"] not in checked:
        shard_path(cache_dir, entry["shard"], where)
        if checked is not None:
            checked.add(entry["shard"])


def read_shard_header(path: str | os.PathLike) -> tuple[dict[str, list[int]], dict[str, str]]:
    """(tensor name -> shape, metadata) of a safetensors file, read from its header alone (no tensor data).

    Raises ``ValueError`` naming the file when it is not a readable safetensors file.
    """
    try:
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            if size > os.fstat(handle.fileno()).st_size - 8:
                raise ValueError(f"header of {size} bytes is longer than the file")
            header = json.loads(handle.read(size))
        metadata = header.pop("__metadata__", None) or {}
        shapes = {str(name): [int(n) for n in info["shape"]] for name, info in header.items()}
    except (OSError, struct.error, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(
            f"shard {str(path)!r} is not a readable safetensors file ({err}); "
            "rerun scfm generate-data on the cache to repair it"
        ) from None
    return shapes, metadata


def read_shard_ids(path: str | os.PathLike) -> list[str]:
    """The sample ids a shard file holds, in row order (its safetensors metadata), [] when unreadable."""
    try:
        return list(json.loads(read_shard_header(path)[1].get("ids", "[]")))
    except (ValueError, TypeError):
        return []


def read_index_lines(cache_dir: str | os.PathLike) -> tuple[list[tuple[int, dict[str, Any]]], bool]:
    """(index entries with their 1-based line numbers, whether the file needs rewriting).

    Every line is checked with :func:`check_entry`: a malformed line anywhere but last, or a line
    naming a file that is not one of the cache's own shards, raises ``ValueError`` naming the
    line. A torn last line (a crash mid-append) is dropped, and the second value is True then, or
    when the last line lacks its newline (the next append would run into it).
    """
    cache_dir = Path(cache_dir)
    path = cache_dir / INDEX_FILE
    if not path.is_file():
        return [], False
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    entries, torn = [], bool(text) and not text.endswith("\n")
    checked: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # the last line has no newline: an append was cut short
                continue
            raise ValueError(f"{path}:{number} is corrupt; delete the cache folder and regenerate it") from None
        check_entry(cache_dir, entry, f"{path}:{number}", checked)
        entries.append((number, entry))
    return entries, torn


def read_index(cache_dir: str | os.PathLike) -> tuple[list[dict[str, Any]], bool]:
    """Index entries (checked as in :func:`read_index_lines`) and whether the file needs rewriting
    (a torn last line, from a crash mid-append, was dropped, or the last line lacks its newline)."""
    lines, torn = read_index_lines(cache_dir)
    return [entry for _, entry in lines], torn


def _own_file(path: Path) -> bool:
    """Whether ``path`` is a file the cache may delete: a plain file (not a link, not a folder)."""
    return path.is_file() and not path.is_symlink()


def repair_cache(cache_dir: Path) -> list[dict[str, Any]]:
    """Make the index and the shard files agree; return the surviving entries.

    Refuses a folder that is not a teacher cache (:func:`check_cache_folder`; a missing or empty
    folder has nothing to repair) and checks every index line (:func:`read_index`) before
    anything is deleted. Then drops the lines of a shard whose file is missing or does not hold
    exactly their ids at their rows (and deletes that shard file), deletes the cache's own shard
    files (``shards/shard_NNNNN.safetensors``) no line references and the temp files of
    interrupted shard writes, and rewrites the index atomically when it changed. Nothing else is
    ever deleted: other files, links and folders in ``shards/`` stay, and nothing outside it.
    """
    cache_dir = Path(cache_dir)
    if not check_cache_folder(cache_dir):
        return []
    entries, changed = read_index(cache_dir)
    shard_dir = shards_dir(cache_dir)
    by_shard: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in entries:
        by_shard[entry["shard"]].append(entry)
    keep = []
    for shard, rows in by_shard.items():
        file = cache_dir / shard  # checked by read_index: shards/shard_NNNNN.safetensors inside the cache
        ids = read_shard_ids(file) if file.is_file() else []
        if sorted(ids) == sorted(e["id"] for e in rows) and all(
            e["row"] < len(ids) and ids[e["row"]] == e["id"] for e in rows
        ):
            keep.extend(rows)
        else:
            changed = True
            if _own_file(file):
                file.unlink()
    ids = [e["id"] for e in keep]
    if len(ids) != len(set(ids)):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(
            f"cache {str(cache_dir)!r}: ids {dup} appear in several shards; "
            "the index is inconsistent, regenerate the cache"
        )
    referenced = {Path(e["shard"]).name for e in keep}
    if shard_dir.is_dir():
        for file in shard_dir.iterdir():
            orphan = SHARD_FILE_PATTERN.fullmatch(file.name) is not None and file.name not in referenced
            if (orphan or SHARD_TEMP_PATTERN.fullmatch(file.name)) and _own_file(file):
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
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{str(path)!r} is not valid JSON ({err}); it is not a scfm teacher cache meta file: "
            "use another folder, or regenerate the cache"
        ) from None
    found = meta.get("format") if isinstance(meta, dict) else None
    if found != FORMAT:
        raise ValueError(
            f"{str(path)!r} is not a scfm teacher cache meta file (format {found!r}, expected {FORMAT!r}): "
            "use another folder, or regenerate the cache"
        )
    return meta


def check_cache_folder(cache_dir: str | os.PathLike) -> bool:
    """Whether ``cache_dir`` is an existing teacher cache (True) or a place for a new one (False: missing or empty).

    A folder is a cache only by its meta.json with the format tag :data:`FORMAT`. Raises
    ``FileExistsError`` for a file, or a non-empty folder without meta.json (not a cache: nothing in
    it may be repaired or written over), ``ValueError`` for a meta.json of another format or a
    ``shards/`` that links out of the folder.
    """
    cache_dir = Path(cache_dir)
    if not cache_dir.exists() and not cache_dir.is_symlink():
        return False
    if not cache_dir.is_dir():
        raise FileExistsError(
            f"{str(cache_dir)!r} exists and is not a folder, so it cannot hold a teacher cache: "
            "choose another out folder (a new or empty one)"
        )
    if (cache_dir / META_FILE).is_file() or (cache_dir / META_FILE).is_symlink():
        read_meta(cache_dir)
        shards_dir(cache_dir)
        return True
    found = sorted(p.name for p in cache_dir.iterdir())
    if found:
        raise FileExistsError(
            f"{str(cache_dir)!r} is not a teacher cache (no {META_FILE}) and is not empty ({', '.join(found[:3])}"
            f"{', ...' if len(found) > 3 else ''}): scfm writes a cache only into a new or empty folder, or extends "
            "an existing cache; choose another out folder"
        )
    return False


def check_meta(cache_dir: Path, meta: dict[str, Any]) -> None:
    """Raise unless ``cache_dir`` can take samples made with ``meta`` (this run's meta.json).

    ``cache_dir`` must be missing, empty, or a teacher cache (:func:`check_cache_folder`) whose
    index lines all name its own shard files (:func:`read_index`) and whose settings equal this
    run's: the message then names the field, both values and the two fixes: another output
    folder, or the setting (:data:`MATCH_KEYS`) changed back to the cache's value.
    """
    if not check_cache_folder(cache_dir):
        return
    read_index(cache_dir)
    old = read_meta(cache_dir)
    for key, setting in MATCH_KEYS.items():
        if old.get(key) != meta.get(key):
            fix = f"set {key}={old.get(key)!r}" if setting == key else f"set {setting} to match the cache's {key}"
            raise ValueError(
                f"cache {str(cache_dir)!r} was made with {key}={old.get(key)!r}, "
                f"this run asks for {key}={meta.get(key)!r}: write to a new out folder, or {fix} to extend it"
            )
