"""``scfm generate-data`` as a library call: create or extend a teacher cache.

:func:`generate_cache` samples the teacher pipeline once (SCFM_SPEC "Official defaults": about 8
teacher samples per aspect-ratio bucket, 32 steps, guidance 3.5), or encodes a folder of
captioned images (the paper's few-shot mode), and stores everything distillation needs, so
that ``scfm distill`` loads the transformer only: no VAE, no text encoder. The folder layout and
the determinism / resume rules are in :mod:`scfm.data.cache_store`; the sample plan is built by
:mod:`scfm.data.cache_inputs`.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from scfm.data.cache_inputs import (
    Bucket,
    SampleSpec,
    check_buckets,
    list_image_pairs,
    load_image,
    plan_image_samples,
    plan_prompt_samples,
    read_prompts,
)
from scfm.data.cache_store import (
    FORMAT,
    META_FILE,
    PREVIEW_DIR,
    SHARED_FILE,
    SHARED_PREFIX,
    append_index,
    check_meta,
    model_id,
    read_meta,
    repair_cache,
    shard_number,
    write_shard,
)
from scfm.data.cache_validation import (
    META_KEY,
    VALIDATION_FILE,
    ValidationSet,
    plan_validation,
    stored_validation,
    validation_prompt_entries,
    write_validation,
)
from scfm.devices import DTYPES, resolve_device
from scfm.fileio import atomic_save_safetensors, atomic_write_json


@dataclass
class GenerateConfig:
    """Settings of :func:`generate_cache` (``scfm generate-data`` has one flag per field)."""

    model: str
    """Folder or Hub id of a flow-matching diffusers pipeline that scfm has an adapter for."""
    out: Path
    """Cache folder (created; an existing cache with the same settings is extended / resumed)."""
    prompts: Path | None = None
    """Prompt file (.txt one a line, or .jsonl with "prompt" and optional "seed"); or use ``images``."""
    images: Path | None = None
    """Folder of images with same-stem .txt captions (few-shot mode: VAE-encoded, no teacher sampling)."""
    steps: int = 32
    """Teacher sampling steps (the pipeline's own schedule)."""
    guidance: float = 3.5
    """Teacher guidance in scfm's convention; the adapter maps it (embedded guidance, or CFG w as w + 1)."""
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
    validation_prompts: str | os.PathLike | Sequence[str] | None = None
    """Prompts for the validation images of ``scfm distill`` (``validate_every``): a prompt file (a path, read
    like ``prompts``) or a list of prompt texts. Their conditioning is encoded once and stored in the cache
    with fixed noise seeds, in the latent shape of the first bucket (:mod:`scfm.data.cache_validation`);
    given for an existing cache, it is added (or replaces the old set) without regenerating any sample."""
    progress: bool = True
    """Show a tqdm progress bar."""

    def validate(self) -> GenerateConfig:
        """Check every field that needs no file or model; returns self. Errors name the field and value."""
        if (self.prompts is None) == (self.images is None):
            raise ValueError(
                f"prompts={self.prompts!r}, images={self.images!r}: set exactly one, prompts (a prompt file: "
                "teacher samples) or images (a folder of captioned images)"
            )
        for name in ("steps", "per_prompt", "shard_size", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.seed < 0:
            raise ValueError(f"seed={self.seed} must be >= 0")
        if not self.guidance >= 0:
            raise ValueError(f"guidance={self.guidance} must be >= 0")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r} must be one of {sorted(DTYPES)}")
        if self.max_samples is not None and self.max_samples < 0:
            raise ValueError(f"max_samples={self.max_samples} must be >= 0 (or None: all)")
        texts = self.validation_prompts
        if texts is not None and not isinstance(texts, (str, os.PathLike)):
            if not isinstance(texts, Sequence) or not all(isinstance(t, str) for t in texts):
                raise ValueError(
                    f"validation_prompts={texts!r} must be a prompt file (a path) or a list of prompt texts"
                )
        return self

    def meta(self, adapter_name: str) -> dict[str, Any]:
        """This run's meta.json (see :mod:`scfm.data.cache_store`) for a model of adapter ``adapter_name``."""
        from scfm._version import __version__

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
    validation_prompts: int = 0
    """Validation prompts encoded into the cache by this call (0: none given, or the same set was already there)."""


def _pending(specs: list[SampleSpec], done: dict[str, dict[str, Any]]) -> list[SampleSpec]:
    """Specs not yet in the index; raises when an indexed id now has another prompt or seed (inputs changed)."""
    out = []
    for spec in specs:
        entry = done.get(spec.id)
        if entry is None:
            out.append(spec)
        elif (entry["prompt"], entry["seed"], entry["bucket"]) != (spec.prompt, spec.seed, spec.bucket.name):
            raise ValueError(
                f"sample {spec.id} is cached with prompt {entry['prompt']!r} (seed {entry['seed']}, "
                f"bucket {entry['bucket']}) but the inputs now give {spec.prompt!r} (seed {spec.seed}, "
                f"bucket {spec.bucket.name}): prompts, captions or seeds were edited or reordered. Restore them, "
                "append new prompts at the end of the file, or write to a new out folder"
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
    """Every check that needs no weights; returns (adapter class, every sample the inputs define).

    Checks the config's fields, the prompt file or image folder, the buckets against the model's
    pixel multiple, and an existing cache's settings.
    """
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


def validation_set(config: GenerateConfig) -> ValidationSet | None:
    """The validation set ``config.validation_prompts`` names (prompt file read and checked), or None."""
    entries = validation_prompt_entries(config.validation_prompts)
    return plan_validation(entries, config.buckets[0].name, config.seed) if entries else None


def _needs_encoding(out: Path, vset: ValidationSet | None) -> bool:
    """Whether ``vset`` differs from the validation set stored in the cache (or its file is missing)."""
    if vset is None:
        return False
    try:
        stored = stored_validation(out)
    except ValueError:  # a malformed entry: replaced
        return True
    return stored != vset or not (out / VALIDATION_FILE).is_file()


def generate_cache(config: GenerateConfig, pipe: Any | None = None) -> GenerateSummary:
    """Create or extend the teacher cache ``config.out`` (format and resume rules: :mod:`scfm.data.cache_store`).

    All inputs are validated before the pipeline is loaded. ``pipe`` may be passed in (already
    loaded, e.g. in tests); otherwise it is loaded with :func:`scfm.models.adapters.load_pipeline`.
    Validation prompts (``config.validation_prompts``) are encoded before the samples are
    generated, and only when the cache does not hold the same set already.
    """
    from tqdm.auto import tqdm

    adapter_cls, specs = validate_inputs(config)
    vset = validation_set(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    done = {e["id"]: e for e in repair_cache(out)}
    pending = _pending(specs, done)
    skipped = len(specs) - len(pending)
    if config.max_samples is not None:
        pending = pending[: config.max_samples]
    meta = config.meta(adapter_cls.adapter_name)
    if (out / META_FILE).is_file():
        old = read_meta(out)
        meta["buckets"] = sorted(set(old["buckets"]) | set(meta["buckets"]))
        if META_KEY in old:  # kept until this run's validation set (if any) replaces it
            meta[META_KEY] = old[META_KEY]
    atomic_write_json(out / META_FILE, meta)
    summary = GenerateSummary(total=len(specs), skipped=skipped, generated=0)
    encode_validation = _needs_encoding(out, vset)
    if not pending and not encode_validation:
        return summary
    if pipe is None:
        from scfm.models.adapters import load_pipeline

        device = resolve_device(config.device)
        pipe, _ = load_pipeline(
            config.model, torch_dtype=DTYPES[config.dtype], local_files_only=config.local_files_only
        )
        if config.cpu_offload:
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    device = pipe._execution_device
    if encode_validation:
        write_validation(out, vset, adapter_cls.encode_prompts(pipe, list(vset.prompts), device))
        summary.validation_prompts = len(vset.prompts)
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
                f"encode_prompts returned {bad} with {shared[bad[0]].shape[0]} rows; "
                f"{SHARED_PREFIX}* keys must have ONE shared row"
            )
        atomic_save_safetensors(shared, out / SHARED_FILE, metadata={"format": FORMAT})


def _write_previews(adapter_cls: type, pipe: Any, x0: torch.Tensor, batch: list[SampleSpec], out: Path) -> None:
    from scfm.fileio import save_png

    images = adapter_cls.decode_latents(pipe, x0)  # [B, 3, H, W], or videos [B, 3, F, H, W]
    for spec, image in zip(batch, images):
        if image.dim() == 4:  # a video: its frames side by side
            image = torch.cat(list(image.unbind(1)), dim=-1)
        save_png(image, out / PREVIEW_DIR / f"{spec.id}.png")
