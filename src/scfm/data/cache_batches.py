"""Training batches from a teacher cache (``scfm generate-data``): no VAE, no text encoder.

:class:`CacheBatches` yields ``{"x0": [B, C, h, w] float32, **cond}`` forever. Every batch comes
from ONE bucket (one latent shape): the bucket is drawn with probability proportional to its
sample count, then B samples of it uniformly with replacement, all from the source's own
``torch.Generator``. Shared one-row tensors of the cache (the negative_* embeddings of
true-CFG families) are added to every batch as [1, ...] (the adapters broadcast them). With
``guidance_range`` (guidance-distilled transformers, which take guidance as an input) each batch
also gets ``"guidance"`` [B] ~ U[low, high] from the same generator (SCFM_SPEC: U[0, 7.5]), given
identically to teacher, EMAs and student by the training loop.

Like :class:`scfm.data.batches.DigitsBatches` the whole state is the generator:
``state_dict()`` / ``load_state_dict()`` let the engine checkpoint it and a resumed run
continue the same batch sequence. Rows are read lazily from the memory-mapped shards, so the
cache may be larger than RAM. Every index line is checked when the source is built, from the
shards' safetensors headers (no tensor data): its shard is one of the cache's own files inside
it, and its row exists and holds its id; so every batch has exactly B rows.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from scfm.data.batches import GeneratorSource
from scfm.data.cache_store import (
    INDEX_FILE,
    SHARED_FILE,
    read_index_lines,
    read_meta,
    read_shard_header,
    read_shard_ids,
)
from scfm.fileio import load_safetensors


def _draw_uniform(batch_size: int, generator: torch.Generator, low: float, high: float) -> torch.Tensor:
    """Values [B] ~ U[low, high] from ``generator``, float32 on the CPU (one ``torch.rand`` call of B draws)."""
    return low + (high - low) * torch.rand(batch_size, generator=generator, dtype=torch.float32)


class CacheBatches(GeneratorSource):
    """Infinite single-bucket batches from the teacher cache at ``cache_dir``.

    Args:
        cache_dir: folder written by ``scfm generate-data``.
        batch_size: samples per batch B.
        seed: seed of the source's generator (bucket choice, rows, guidance).
        guidance_range: (low, high) to add ``"guidance"`` [B] ~ U[low, high]; None to omit it.
        transform: applied to every batch before it is returned (the adapter's ``compact_cond``, which cuts
            padded text where that is exact); it must be deterministic and draw no random numbers.

    Attributes read by callers: ``meta`` (meta.json), ``buckets`` (names with samples), ``latent_shapes``
    (bucket -> x0 shape without the batch dim), ``guidance_range`` and ``transform`` as given.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        batch_size: int,
        seed: int = 0,
        guidance_range: tuple[float, float] | None = None,
        transform: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    ) -> None:
        super().__init__(batch_size, seed)
        self.cache_dir = Path(cache_dir)
        self.meta = read_meta(self.cache_dir)
        lines, _ = read_index_lines(self.cache_dir)  # every line's shard is one of the cache's own files
        if not lines:
            raise ValueError(
                f"teacher cache {str(self.cache_dir)!r} has no samples in {INDEX_FILE}; "
                f"run scfm generate-data --out {self.cache_dir} to fill it"
            )
        self.keys, self.latent_shapes = self._check_rows(lines)
        rows: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for _, entry in lines:
            rows[entry["bucket"]].append((entry["shard"], entry["row"]))
        self.buckets = sorted(rows)
        self.rows = [rows[b] for b in self.buckets]
        self.weights = torch.tensor([len(r) for r in self.rows], dtype=torch.float64)
        shared_file = self.cache_dir / SHARED_FILE
        if shared_file.exists() and not shared_file.resolve().is_relative_to(self.cache_dir.resolve()):
            raise ValueError(
                f"{str(shared_file)!r} links to {str(shared_file.resolve())!r}, outside the cache; "
                "regenerate the cache in a new folder"
            )
        self.shared = load_safetensors(shared_file) if shared_file.is_file() else {}
        if guidance_range is not None and not 0 <= guidance_range[0] <= guidance_range[1]:
            raise ValueError(f"guidance_range={guidance_range} must satisfy 0 <= low <= high")
        self.guidance_range = guidance_range
        self.transform = transform
        self._handles: dict[str, Any] = {}

    def _check_rows(self, lines: list[tuple[int, dict[str, Any]]]) -> tuple[list[str], dict[str, tuple[int, ...]]]:
        """Check every index line against its shard's header; returns the tensor names every shard holds
        and the latent shape of each bucket (bucket name -> x0 shape without the batch dim).

        Each line's shard must exist and hold the same tensors as the others, with one row count
        and (per bucket) one latent shape, and the line's row must be within that count and hold
        the line's id. Raises ``ValueError`` naming the index line.
        """
        index = self.cache_dir / INDEX_FILE
        fix = f"rerun scfm generate-data on {str(self.cache_dir)!r} to repair the cache"
        headers: dict[str, tuple[dict[str, list[int]], list[str]]] = {}
        keys: list[str] | None = None
        latent: dict[str, list[int]] = {}
        for number, entry in lines:
            where, shard, row = f"{index}:{number}", entry["shard"], entry["row"]
            if shard not in headers:
                path = self.cache_dir / shard
                if not path.is_file():
                    raise ValueError(f"{where}: shard {shard!r} does not exist; {fix}")
                shapes, _ = read_shard_header(path)
                counts = sorted({shape[0] if shape else 0 for shape in shapes.values()})
                if "x0" not in shapes or len(counts) != 1:
                    raise ValueError(
                        f"{where}: shard {shard!r} holds tensors {sorted(shapes)} with row counts {counts}; a cache "
                        f"shard holds 'x0' and the cond tensors, all with one row per sample; {fix}"
                    )
                if keys is not None and sorted(shapes) != keys:
                    raise ValueError(
                        f"{where}: shard {shard!r} holds tensors {sorted(shapes)}, the other shards {keys}; {fix}"
                    )
                keys = sorted(shapes)
                headers[shard] = (shapes, read_shard_ids(path))
            shapes, ids = headers[shard]
            if row >= shapes["x0"][0]:
                raise ValueError(
                    f"{where}: row {row} is out of range: shard {shard!r} holds {shapes['x0'][0]} rows; {fix}"
                )
            if ids and (len(ids) <= row or ids[row] != entry["id"]):
                raise ValueError(f"{where}: row {row} of shard {shard!r} is not sample {entry['id']!r}; {fix}")
            expected = latent.setdefault(entry["bucket"], shapes["x0"][1:])
            if shapes["x0"][1:] != expected:
                raise ValueError(
                    f"{where}: shard {shard!r} holds latents of shape {shapes['x0'][1:]} for bucket "
                    f"{entry['bucket']!r}, other shards {expected}; {fix}"
                )
        return keys or [], {bucket: tuple(shape) for bucket, shape in latent.items()}

    def __len__(self) -> int:
        """Samples in the cache."""
        return int(self.weights.sum())

    @property
    def cond_keys(self) -> list[str]:
        """Every cond key a batch carries (per-sample, shared, and "guidance" when drawn)."""
        keys = [k for k in self.keys if k != "x0"] + sorted(self.shared)
        return keys + (["guidance"] if self.guidance_range is not None else [])

    def _shard(self, name: str):
        from safetensors import safe_open

        if name not in self._handles:
            self._handles[name] = safe_open(str(self.cache_dir / name), framework="pt", device="cpu")
        return self._handles[name]

    def _rows(self, picks: list[tuple[str, int]]) -> dict[str, torch.Tensor]:
        out: dict[str, list[torch.Tensor]] = defaultdict(list)
        for shard, row in picks:
            handle = self._shard(shard)
            for key in self.keys:
                part = handle.get_slice(key)[row : row + 1]
                if part.shape[0] != 1:  # checked at construction; the file changed since
                    raise ValueError(
                        f"shard {shard!r} of cache {str(self.cache_dir)!r} has no row {row} of {key!r} (it changed "
                        "after the cache was opened); rerun scfm generate-data on it to repair"
                    )
                out[key].append(part)
        return {key: torch.cat(values) for key, values in out.items()}

    def next_batch(self) -> dict[str, torch.Tensor]:
        """``{"x0": [B, C, h, w] float32, per-sample cond [B, ...], shared cond [1, ...], ("guidance" [B])}``."""
        bucket = int(torch.multinomial(self.weights, 1, generator=self.generator))
        rows = self.rows[bucket]
        idx = torch.randint(0, len(rows), (self.batch_size,), generator=self.generator).tolist()
        batch = self._rows([rows[i] for i in idx])
        batch["x0"] = batch["x0"].float()
        batch.update(self.shared)
        if self.guidance_range is not None:
            batch["guidance"] = _draw_uniform(self.batch_size, self.generator, *self.guidance_range)
        return batch if self.transform is None else self.transform(batch)

    def __getstate__(self) -> dict[str, Any]:  # safe_open handles do not pickle (multiprocess loaders)
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state
