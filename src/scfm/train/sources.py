"""The teacher and the data a :class:`DistillConfig` names, for `scfm distill` and run folders.

- Built-in: ``teacher: digits | toy2d:<name> | <file written by scfm pretrain>``,
  ``data: digits | toy2d:<name>``.
- Diffusers: ``teacher: diffusers:<pipeline folder or Hub id>``, ``data: cache:<dir>``. Only the
  transformer is loaded (``Adapter.from_pretrained(..., subfolder="transformer")``): text
  embeddings and x0 latents come from the teacher cache written by ``scfm generate-data``, so
  the text encoders never enter the distillation process, and the VAE only for validation
  images (``validate_every``, main process: :mod:`scfm.train.validation`), whose prompts' embeddings
  the cache must hold (checked here). Config fields used:
  ``model_dtype``, ``local_files_only``, ``cfg_mode`` / ``cfg_scale`` (true-CFG families),
  ``guidance_min`` / ``guidance_max`` (transformers with embedded guidance, drawn per sample by
  :class:`scfm.data.cache_batches.CacheBatches`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scfm.data.batches import DigitsBatches, Toy2DBatches
from scfm.data.cache_batches import CacheBatches
from scfm.data.cache_store import SHARED_FILE, model_id, read_meta
from scfm.data.cache_validation import check_validation
from scfm.data.toy2d import TOY2D_NAMES
from scfm.devices import DTYPES
from scfm.models.adapters import VelocityAdapter, adapter_class_for, read_component_config
from scfm.models.builtin import load_builtin, load_shipped_teacher
from scfm.train.config import CACHE_PREFIX, DIFFUSERS_PREFIX, DistillConfig


def is_diffusers_teacher(config: DistillConfig) -> bool:
    """Whether ``config.teacher`` names a diffusers model (``diffusers:<path or id>``)."""
    return config.teacher.startswith(DIFFUSERS_PREFIX)


def model_path(config: DistillConfig) -> str:
    """The pipeline folder / Hub id of ``teacher: diffusers:<...>``."""
    return config.teacher.removeprefix(DIFFUSERS_PREFIX).strip()


def cache_path(config: DistillConfig) -> Path:
    """The cache folder of ``data: cache:<dir>``."""
    return Path(config.data.removeprefix(CACHE_PREFIX).strip()).expanduser()


def _toy_name(spec: str, field: str) -> str:
    name = spec.split(":", 1)[1] if ":" in spec else ""
    if name not in TOY2D_NAMES:
        raise ValueError(
            f"{field}={spec!r}: unknown 2-D distribution {name!r}; use toy2d:<name> with name in {TOY2D_NAMES}"
        )
    return name


def build_teacher(config: DistillConfig, device: torch.device | str | None = None) -> nn.Module:
    """The frozen teacher the config names, in eval mode, on ``device`` (None: left where it loads)."""
    if is_diffusers_teacher(config):
        return _diffusers_teacher(config, device)
    spec, where = config.teacher, str(device or "cpu")
    if spec == "digits":
        return load_shipped_teacher("digits", device=where)
    if spec.startswith("toy2d:"):
        return load_shipped_teacher(f"toy2d:{_toy_name(spec, 'teacher')}", device=where)
    if Path(spec).suffix == ".safetensors":
        return load_builtin(spec, device=where)
    raise ValueError(
        f"teacher={spec!r} is not 'digits', 'toy2d:<name>', a .safetensors file written by `scfm pretrain`, "
        "or diffusers:<pipeline folder or Hub id>"
    )


def build_data(config: DistillConfig) -> Iterable[dict[str, Any]]:
    """A resumable batch source with the config's (global) batch size and seed; a cache is checked first
    (with ``validate_every``, also its validation prompts: all before any weight loads)."""
    spec = config.data
    if spec.startswith(CACHE_PREFIX):
        adapter_cls = adapter_class_for(model_path(config), config.local_files_only)
        check_cache(config, adapter_cls)
        source = CacheBatches(
            cache_path(config),
            config.batch_size,
            seed=config.seed,
            guidance_range=guidance_range(config),
            transform=adapter_cls.compact_cond,
        )
        if config.validate_every:
            check_validation(source.cache_dir, source.latent_shapes, asked_by=f"validate_every={config.validate_every}")
        return source
    if spec == "digits":
        return DigitsBatches(config.batch_size, seed=config.seed)
    if spec.startswith("toy2d:"):
        return Toy2DBatches(_toy_name(spec, "data"), config.batch_size, seed=config.seed)
    raise ValueError(f"data={spec!r} is not 'digits', 'toy2d:<name>' or cache:<dir written by scfm generate-data>")


def guidance_range(config: DistillConfig) -> tuple[float, float] | None:
    """(guidance_min, guidance_max) when the transformer embeds guidance (``guidance_embeds`` in its config)."""
    transformer = read_component_config(model_path(config), "transformer", config.local_files_only) or {}
    return (config.guidance_min, config.guidance_max) if transformer.get("guidance_embeds") else None


def check_cache(config: DistillConfig, adapter_cls: type[VelocityAdapter]) -> dict[str, Any]:
    """Raise when the cache was made for another model family or lacks what the CFG mode needs; returns its meta."""
    cache = cache_path(config)
    meta = read_meta(cache)
    if meta.get("adapter") != adapter_cls.adapter_name:
        raise ValueError(
            f"data={config.data!r} was generated with a {meta.get('adapter')!r} model ({meta.get('model')}), but "
            f"teacher={config.teacher!r} is a {adapter_cls.adapter_name!r} model: generate the cache with the teacher "
            "you distill"
        )
    if meta.get("model") != model_id(model_path(config)):
        print(f"note: cache {cache} was generated with model {meta.get('model')!r}; distilling {model_path(config)!r}")
    if adapter_cls.true_cfg and config.cfg_mode != "none" and not (cache / SHARED_FILE).is_file():
        raise ValueError(
            f"cfg_mode={config.cfg_mode!r} needs the negative-prompt embeddings, but {cache} has no {SHARED_FILE}; "
            "regenerate the cache or set cfg_mode: none"
        )
    return meta


def _diffusers_teacher(config: DistillConfig, device: torch.device | str | None) -> VelocityAdapter:
    """The teacher adapter: the transformer only, in ``model_dtype``."""
    path = model_path(config)
    adapter_cls = adapter_class_for(path, config.local_files_only)
    teacher = adapter_cls.from_pretrained(
        path,
        subfolder="transformer",
        torch_dtype=DTYPES[config.model_dtype],
        local_files_only=config.local_files_only,
        adapter_kwargs=adapter_cls.guidance_kwargs(config.cfg_scale, config.cfg_mode),
    )
    teacher.requires_grad_(False)
    return teacher.to(device).eval() if device is not None else teacher.eval()
