"""Teacher and data for `scfm distill` on a diffusers model: ``teacher: diffusers:<model>``, ``data: cache:<dir>``.

Only the transformer is loaded (``Adapter.from_pretrained(..., subfolder="transformer")``):
the text embeddings and x0 latents come from the teacher cache written by ``scfm generate-data``,
so the VAE and the text encoders never enter the distillation process.

Config fields used here (see :class:`scfm.train.config.DistillConfig`): ``model_dtype`` (the
frozen transformer's dtype), ``local_files_only``, ``cfg_mode`` / ``cfg_scale`` (true-CFG
families: SD3), ``guidance_min`` / ``guidance_max`` (guidance-distilled transformers: Flux.1-dev,
drawn per sample by :class:`scfm.data.cache_batches.CacheBatches`).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch

from scfm.data.cache_batches import CacheBatches
from scfm.data.teacher_cache import SHARED_FILE, model_id, read_meta
from scfm.models.adapters import VelocityAdapter, adapter_class_for, read_component_config
from scfm.train.config import CACHE_PREFIX, DIFFUSERS_PREFIX, DistillConfig

MODEL_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def is_diffusers_run(config: DistillConfig) -> bool:
    """Whether ``config.teacher`` names a diffusers model (``diffusers:<path or id>``)."""
    return config.teacher.startswith(DIFFUSERS_PREFIX)


def model_path(config: DistillConfig) -> str:
    """The pipeline folder / Hub id of ``teacher: diffusers:<...>``."""
    return config.teacher[len(DIFFUSERS_PREFIX) :].strip()


def cache_path(config: DistillConfig) -> Path:
    """The cache folder of ``data: cache:<dir>``."""
    return Path(config.data[len(CACHE_PREFIX) :].strip()).expanduser()


def adapter_kwargs(adapter_cls: type[VelocityAdapter], config: DistillConfig) -> dict[str, Any]:
    """The config's CFG settings for adapters whose constructor takes them (SD3: guidance_scale, cfg_mode)."""
    params = inspect.signature(adapter_cls.__init__).parameters
    candidates = {"guidance_scale": config.cfg_scale, "cfg_mode": config.cfg_mode}
    return {k: v for k, v in candidates.items() if k in params}


def guidance_range(config: DistillConfig) -> tuple[float, float] | None:
    """(guidance_min, guidance_max) when the transformer embeds guidance (``guidance_embeds`` in its config), else None."""
    transformer = read_component_config(model_path(config), "transformer", config.local_files_only) or {}
    return (config.guidance_min, config.guidance_max) if transformer.get("guidance_embeds") else None


def check_cache(config: DistillConfig, adapter_cls: type[VelocityAdapter]) -> dict[str, Any]:
    """Raise when the cache was made for another model family or lacks what the CFG mode needs; returns its meta."""
    cache = cache_path(config)
    meta = read_meta(cache)
    if meta.get("adapter") != adapter_cls.adapter_name:
        raise ValueError(
            f"data={config.data!r} was generated with a {meta.get('adapter')!r} model ({meta.get('model')}), but "
            f"teacher={config.teacher!r} is a {adapter_cls.adapter_name!r} model: generate the cache with the teacher you distill"
        )
    if meta.get("model") != model_id(model_path(config)):
        print(f"note: cache {cache} was generated with model {meta.get('model')!r}; distilling {model_path(config)!r}")
    if (
        "cfg_mode" in adapter_kwargs(adapter_cls, config)
        and config.cfg_mode != "none"
        and not (cache / SHARED_FILE).is_file()
    ):
        raise ValueError(
            f"cfg_mode={config.cfg_mode!r} needs the negative-prompt embeddings, but {cache} has no {SHARED_FILE}; regenerate the cache or set cfg_mode: none"
        )
    return meta


def build_data(config: DistillConfig) -> CacheBatches:
    """The resumable cache batch source with the config's (global) batch size and seed."""
    adapter_cls = adapter_class_for(model_path(config), config.local_files_only)
    check_cache(config, adapter_cls)
    return CacheBatches(cache_path(config), config.batch_size, seed=config.seed, guidance_range=guidance_range(config))


def build_teacher(config: DistillConfig, device: torch.device | str | None = None) -> VelocityAdapter:
    """The teacher adapter: the transformer only, in ``model_dtype``, moved to ``device`` (distill moves it otherwise)."""
    path = model_path(config)
    adapter_cls = adapter_class_for(path, config.local_files_only)
    teacher = adapter_cls.from_pretrained(
        path,
        subfolder="transformer",
        torch_dtype=MODEL_DTYPES[config.model_dtype],
        local_files_only=config.local_files_only,
        adapter_kwargs=adapter_kwargs(adapter_cls, config),
    )
    teacher.requires_grad_(False)
    return teacher.to(device).eval() if device is not None else teacher.eval()


def build_run(config: DistillConfig, device: torch.device) -> tuple[VelocityAdapter, CacheBatches, None]:
    """(teacher, data, on_validate) for `scfm distill`: the cache is validated before any weight is loaded."""
    data = build_data(config)
    return build_teacher(config, device), data, None
