"""Teacher data for diffusers models: x0 latents and text embeddings cached in safetensors shards.

``scfm generate-data`` samples the teacher pipeline once (SCFM_SPEC "Official defaults": about 8
teacher samples per aspect-ratio bucket, 32 steps, guidance 3.5), or encodes a folder of
captioned images (the paper's few-shot mode), and stores everything distillation needs, so
that ``scfm distill`` loads the transformer only: no VAE, no text encoder.

A cache folder::

    meta.json             model, adapter, mode, steps, guidance, buckets, dtype, seed, scfm version
    index.jsonl           one line per sample: {"id", "prompt", "bucket", "shard", "row", "seed"} (+ "image")
    shared.safetensors    one-row tensors every sample shares (the negative_* embeddings of true-CFG families)
    shards/shard_NNNNN.safetensors
                          "x0" [N, C, h, w] float32 (the adapter's latent convention) and every per-sample
                          cond key of ``Adapter.encode_prompts`` [N, ...] in the text encoders' dtype; one
                          bucket per shard; metadata {"ids": JSON list of the N ids, "bucket": "WxH"}
    previews/<id>.png     optional decoded previews

Determinism and resuming. The sample list is a pure function of the inputs: prompt i (0-based,
blank lines skipped), bucket b and repeat r give the id ``p{i:06d}_{WxH}_r{r:02d}`` and the
seed (the prompt's own "seed" + r when the jsonl gives one, else a hash of
(base seed, i, bucket, r)); each sample's noise comes from its own CPU generator. A rerun
skips the ids already in the index, so the cache's content does not depend on where a run
was interrupted; prompts appended to the file (or new buckets) extend the cache, while edited
or reordered prompts are refused (their ids would now mean other prompts). Samples whose
prompt or bucket a later run no longer lists stay in the cache and are trained on. A shard is written to a temp name and renamed; only then are its index lines
appended (one write, flush, fsync). On start, index lines of a missing or partially indexed
shard are dropped, and shard files the index does not reference are deleted, so there are
never duplicates or lost samples.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from scfm.fileio import atomic_save_safetensors, atomic_write_json, atomic_write_text

META_FILE = "meta.json"
INDEX_FILE = "index.jsonl"
SHARED_FILE = "shared.safetensors"
SHARD_DIR = "shards"
PREVIEW_DIR = "previews"
FORMAT = "scfm-teacher-cache"
SHARED_PREFIX = "negative_"
"""cond keys with this prefix have one row shared by all samples (stored once in shared.safetensors)."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MATCH_KEYS = {
    "model": "--model",
    "adapter": "--model",
    "mode": "--prompts/--images",
    "steps": "--steps",
    "guidance": "--guidance",
    "dtype": "--dtype",
    "seed": "--seed",
}
"""meta.json fields that must equal this run's settings to extend a cache, with the flag that sets them."""


# ------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class Bucket:
    """An image size in pixels."""

    width: int
    height: int

    @property
    def name(self) -> str:
        return f"{self.width}x{self.height}"


def parse_buckets(text: str | Sequence[str]) -> tuple[Bucket, ...]:
    """``"512x512,768x512"`` (WIDTHxHEIGHT, comma separated) -> buckets, duplicates removed."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[Bucket] = []
    for item in (i.strip() for i in items):
        w, sep, h = item.lower().partition("x")
        if not sep or not w.isdigit() or not h.isdigit() or int(w) < 1 or int(h) < 1:
            raise ValueError(f"bucket {item!r} is not WIDTHxHEIGHT in pixels (for example --buckets 512x512,768x512)")
        bucket = Bucket(int(w), int(h))
        if bucket not in out:
            out.append(bucket)
    if not out:
        raise ValueError("--buckets is empty; give at least one WIDTHxHEIGHT")
    return tuple(out)


def check_buckets(buckets: Sequence[Bucket], multiple: int | None, model: str) -> None:
    """Raise if a side is not a multiple of ``multiple`` (VAE downsampling x patch), naming the nearest fit."""
    if not multiple:
        return
    for b in buckets:
        if b.width % multiple or b.height % multiple:
            fix = f"{max(multiple, round(b.width / multiple) * multiple)}x{max(multiple, round(b.height / multiple) * multiple)}"
            raise ValueError(
                f"bucket {b.name}: {model} needs width and height divisible by {multiple} (VAE downsampling x patch size); use e.g. {fix}"
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
            f"prompt file {str(path)!r} does not exist; pass a .txt (one prompt per line) or .jsonl file with --prompts"
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
            f"images {clashes[:4]} in {str(folder)!r} share a file stem, so they would share a caption and a sample id; rename them"
        )
    missing = [p.name for p in images if not p.with_suffix(".txt").is_file()]
    if missing:
        raise ValueError(
            f"image(s) {missing[:5]} in {str(folder)!r} have no caption: add a same-stem .txt file (e.g. {Path(missing[0]).stem}.txt) holding the prompt"
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


def model_id(model: str | os.PathLike) -> str:
    """How a model is recorded in meta.json: an existing local folder as its absolute path, a Hub id as is."""
    text = os.fspath(model)
    return os.path.abspath(text) if os.path.isdir(text) else text


def derived_seed(*parts: Any) -> int:
    """A seed in [0, 2**63) from a hash of ``parts`` (stable across runs and platforms)."""
    digest = hashlib.sha256(json.dumps(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def plan_prompt_samples(
    prompts: Sequence[PromptEntry], buckets: Sequence[Bucket], per_prompt: int, seed: int
) -> list[SampleSpec]:
    """Every (bucket, prompt, repeat) sample, bucket-major; ids and seeds as in the module docstring."""
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


# ------------------------------------------------------------------------------ index and shards


def shard_name(number: int) -> str:
    return f"{SHARD_DIR}/shard_{number:05d}.safetensors"


def shard_number(name: str) -> int:
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
            f"cache {str(cache_dir)!r}: ids {dup} appear in several shards; the index is inconsistent, regenerate the cache"
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
            f"{str(cache_dir)!r} is not a teacher cache (no {META_FILE}); make one with scfm generate-data --out {cache_dir}"
        )
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a scfm teacher cache meta file (format {meta.get('format')!r})")
    return meta


def check_meta(cache_dir: Path, meta: dict[str, Any]) -> None:
    """Raise when an existing cache was made with other settings (names the field, both values and the fix)."""
    if not (cache_dir / META_FILE).is_file():
        return
    old = read_meta(cache_dir)
    for key, flag in MATCH_KEYS.items():
        if old.get(key) != meta.get(key):
            raise ValueError(
                f"cache {str(cache_dir)!r} was made with {key}={old.get(key)!r}, this run asks for {key}={meta.get(key)!r}: "
                f"pick a new --out folder, or rerun with {flag} matching the cache to extend it"
            )


# ------------------------------------------------------------------------------ generation


@dataclass
class GenerateConfig:
    """Settings of ``scfm generate-data`` (each one a CLI flag)."""

    model: str
    """Pipeline folder or Hub id (Flux / SD3)."""
    out: Path
    """Cache folder (created; an existing cache with the same settings is extended / resumed)."""
    prompts: Path | None = None
    """Prompt file (.txt one a line, or .jsonl with "prompt" and optional "seed"); or use ``images``."""
    images: Path | None = None
    """Folder of images with same-stem .txt captions (few-shot mode: VAE-encoded, no teacher sampling)."""
    steps: int = 32
    """Teacher sampling steps (the pipeline's own schedule)."""
    guidance: float = 3.5
    """scfm's guidance convention: Flux embedded guidance; SD3 CFG w (the pipeline gets w + 1)."""
    buckets: tuple[Bucket, ...] = (Bucket(512, 512),)
    """Image sizes WIDTHxHEIGHT; every prompt is sampled in every bucket (images: nearest bucket)."""
    per_prompt: int = 1
    """Samples per prompt and bucket."""
    shard_size: int = 64
    """Samples per shard file."""
    batch_size: int = 4
    """Prompts per pipeline call."""
    seed: int = 0
    """Base seed of the derived per-sample seeds."""
    previews: bool = False
    """Also write previews/<id>.png (decoded with the VAE)."""
    dtype: str = "bf16"
    """Pipeline dtype: bf16, fp16 or fp32 (text embeddings are stored in it; x0 always float32)."""
    device: str = "auto"
    """'auto' (cuda when available), 'cpu', 'cuda', 'cuda:1', ..."""
    cpu_offload: bool = False
    """Keep models on the CPU and move each to the GPU when used (diffusers model CPU offload)."""
    local_files_only: bool = False
    """Do not download: the model must be a local folder or already in the Hugging Face cache."""
    max_samples: int | None = None
    """Stop after generating this many new samples (None: all); rerun to continue."""
    progress: bool = True
    """Show a tqdm progress bar."""

    def validate(self) -> GenerateConfig:
        if (self.prompts is None) == (self.images is None):
            raise ValueError(
                "give exactly one of --prompts FILE (teacher samples) or --images FOLDER (captioned images)"
            )
        for name in ("steps", "per_prompt", "shard_size", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')}={value!r} must be a positive integer")
        if self.seed < 0:
            raise ValueError(f"--seed={self.seed} must be >= 0")
        if not self.guidance >= 0:
            raise ValueError(f"--guidance={self.guidance} must be >= 0")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype={self.dtype!r} must be one of {sorted(DTYPES)}")
        if self.max_samples is not None and self.max_samples < 0:
            raise ValueError(f"--max-samples={self.max_samples} must be >= 0")
        return self

    def meta(self, adapter_name: str) -> dict[str, Any]:
        from scfm import __version__

        images = self.images is not None
        return {
            "format": FORMAT,
            "version": 1,
            "scfm_version": __version__,
            "model": model_id(self.model),
            "adapter": adapter_name,
            "mode": "images" if images else "prompts",
            "steps": None if images else self.steps,
            "guidance": None if images else float(self.guidance),
            "dtype": self.dtype,
            "seed": self.seed,
            "buckets": [b.name for b in self.buckets],
        }


@dataclass
class GenerateSummary:
    """What a ``generate_cache`` call did."""

    total: int
    """Samples the inputs define."""
    skipped: int
    """Already in the cache."""
    generated: int
    """Written by this call."""
    shards: list[str] = field(default_factory=list)
    """Shards written by this call."""


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _pending(specs: list[SampleSpec], done: dict[str, dict[str, Any]]) -> list[SampleSpec]:
    """Specs not yet in the index; raises when an indexed id now has another prompt or seed (inputs changed)."""
    out = []
    for spec in specs:
        entry = done.get(spec.id)
        if entry is None:
            out.append(spec)
        elif (entry["prompt"], entry["seed"], entry["bucket"]) != (spec.prompt, spec.seed, spec.bucket.name):
            raise ValueError(
                f"sample {spec.id} is cached with prompt {entry['prompt']!r} (seed {entry['seed']}, bucket {entry['bucket']}) but the "
                f"inputs now give {spec.prompt!r} (seed {spec.seed}, bucket {spec.bucket.name}): prompts, captions or seeds were edited "
                "or reordered. Restore them, append new prompts at the end of the file, or use a new --out folder"
            )
    return out


def _chunks(specs: list[SampleSpec], size: int) -> list[list[SampleSpec]]:
    """Split into runs of at most ``size`` samples of ONE bucket each (order kept)."""
    groups: list[list[SampleSpec]] = []
    for spec in specs:
        if groups and len(groups[-1]) < size and groups[-1][0].bucket == spec.bucket:
            groups[-1].append(spec)
        else:
            groups.append([spec])
    return groups


def validate_inputs(config: GenerateConfig) -> tuple[type, list[SampleSpec]]:
    """Every check that needs no weights: flags, prompt file / image folder, buckets vs the model's
    pixel multiple, and an existing cache's settings. Returns (adapter class, all sample specs)."""
    from scfm.models.adapters import adapter_class_for

    config.validate()
    if config.prompts is not None:
        inputs: list[Any] = read_prompts(config.prompts)
    else:
        inputs = list_image_pairs(config.images)
    adapter_cls = adapter_class_for(config.model, config.local_files_only)
    check_buckets(config.buckets, adapter_cls.pixel_multiple(config.model, config.local_files_only), config.model)
    check_meta(Path(config.out), config.meta(adapter_cls.adapter_name))
    if config.prompts is not None:
        specs = plan_prompt_samples(inputs, config.buckets, config.per_prompt, config.seed)
    else:
        specs = plan_image_samples(inputs, config.buckets, config.seed)
    return adapter_cls, specs


def generate_cache(config: GenerateConfig, pipe: Any | None = None) -> GenerateSummary:
    """Create or extend the teacher cache ``config.out`` (see the module docstring).

    All inputs are validated before the pipeline is loaded. ``pipe`` may be passed in (already
    loaded, e.g. in tests); otherwise it is loaded with :func:`scfm.models.adapters.load_pipeline`.
    """
    from tqdm.auto import tqdm

    adapter_cls, specs = validate_inputs(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    done = {e["id"]: e for e in repair_cache(out)}
    pending = _pending(specs, done)
    skipped = len(specs) - len(pending)
    if config.max_samples is not None:
        pending = pending[: config.max_samples]
    meta = config.meta(adapter_cls.adapter_name)
    if (out / META_FILE).is_file():
        meta["buckets"] = sorted(set(read_meta(out)["buckets"]) | set(meta["buckets"]))
    atomic_write_json(out / META_FILE, meta)
    summary = GenerateSummary(total=len(specs), skipped=skipped, generated=0)
    if not pending:
        return summary
    if pipe is None:
        from scfm.models.adapters import load_pipeline

        pipe, _ = load_pipeline(
            config.model, torch_dtype=DTYPES[config.dtype], local_files_only=config.local_files_only
        )
        device = _device(config.device)
        if config.cpu_offload:
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    device = pipe._execution_device
    number = max((shard_number(e["shard"]) for e in done.values()), default=-1) + 1
    bar = tqdm(total=len(pending), desc="scfm generate-data", disable=not config.progress)
    for shard_specs in _chunks(pending, config.shard_size):
        tensors = _make_shard(adapter_cls, pipe, shard_specs, config, device, out)
        name = write_shard(out, number, tensors, [s.id for s in shard_specs], shard_specs[0].bucket)
        append_index(out, [_entry(s, name, row) for row, s in enumerate(shard_specs)])
        summary.generated += len(shard_specs)
        summary.shards.append(name)
        number += 1
        bar.update(len(shard_specs))
    bar.close()
    return summary


def _entry(spec: SampleSpec, shard: str, row: int) -> dict[str, Any]:
    entry = {
        "id": spec.id,
        "prompt": spec.prompt,
        "bucket": spec.bucket.name,
        "shard": shard,
        "row": row,
        "seed": spec.seed,
    }
    if spec.image is not None:
        entry["image"] = spec.image
    return entry


def _make_shard(
    adapter_cls: type, pipe: Any, specs: list[SampleSpec], config: GenerateConfig, device: torch.device, out: Path
) -> dict[str, torch.Tensor]:
    """Samples of one shard (one bucket), batch by batch: {"x0": [N, C, h, w] float32, cond [N, ...]} on the CPU.

    The prompts are encoded twice per batch (``encode_prompts`` for the cache, and inside the
    pipeline call of ``generate_latents``): the protocol keeps the hooks independent, and the text
    encoders cost little next to ``steps`` transformer passes."""
    parts: dict[str, list[torch.Tensor]] = defaultdict(list)
    bucket = specs[0].bucket
    for start in range(0, len(specs), config.batch_size):
        batch = specs[start : start + config.batch_size]
        prompts = [s.prompt for s in batch]
        generators = [torch.Generator().manual_seed(s.seed) for s in batch]
        cond = adapter_cls.encode_prompts(pipe, prompts, device)
        if config.images is None:
            x0 = adapter_cls.generate_latents(
                pipe, prompts, bucket.height, bucket.width, config.steps, config.guidance, generators
            )
        else:
            images = torch.stack([load_image(Path(config.images) / s.image, bucket) for s in batch])
            x0 = adapter_cls.encode_images(pipe, images, generators)
        _store_shared(out, cond)
        parts["x0"].append(x0.detach().float().cpu())
        for key, value in cond.items():
            if not key.startswith(SHARED_PREFIX):
                parts[key].append(value.detach().cpu())
        if config.previews:
            _write_previews(adapter_cls, pipe, x0, batch, out)
    return {key: torch.cat(values) for key, values in parts.items()}


def _store_shared(out: Path, cond: dict[str, torch.Tensor]) -> None:
    """Write the one-row shared tensors (negative_* keys) once."""
    shared = {k: v.detach().cpu() for k, v in cond.items() if k.startswith(SHARED_PREFIX)}
    if shared and not (out / SHARED_FILE).is_file():
        bad = [k for k, v in shared.items() if v.shape[0] != 1]
        if bad:
            raise ValueError(
                f"encode_prompts returned {bad} with {shared[bad[0]].shape[0]} rows; negative_* keys must have ONE shared row"
            )
        atomic_save_safetensors(shared, out / SHARED_FILE, metadata={"format": FORMAT})


def _write_previews(adapter_cls: type, pipe: Any, x0: torch.Tensor, batch: list[SampleSpec], out: Path) -> None:
    from scfm.pipeline_sampling import save_png

    images = adapter_cls.decode_latents(pipe, x0)  # [B, 3, H, W], or videos [B, 3, F, H, W]
    for spec, image in zip(batch, images):
        if image.dim() == 4:  # a video: its frames side by side
            image = torch.cat(list(image.unbind(1)), dim=-1)
        save_png(image, out / PREVIEW_DIR / f"{spec.id}.png")
