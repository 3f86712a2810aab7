"""Validation images for diffusers-teacher runs: the teacher next to the student, every ``validate_every`` steps.

The prompts' conditioning comes from the teacher cache (``scfm generate-data --validation-prompts``,
:mod:`scfm.data.cache_validation`), so no text encoder is built; the VAE is, only when validation is
on and only on the process that builds this callback (the main one: ``scfm distill`` builds it on
rank 0). A grid ``output_dir/validation/step_NNNNNNNN.png`` has one column per validation prompt
and the rows

- the teacher (the same module with the LoRA off), ``plan.teacher_max`` Euler steps (the grid the
  run's calibration compares against), rendered once, at the first validation, and kept;
- the live student LoRA at each of ``calibration_steps`` Euler steps, from the same noise.

Every row is sampled with :func:`scfm.sampling.sample` (the adapter's ``default_shift``) under the
run's ``mixed_precision`` autocast, guided as the run's teacher is (true CFG by the adapter's
``cfg_mode``; baked-CFG students sampled in their ``student_pass``; embedded guidance at the cache's
teacher guidance), at most ``batch_size`` prompts a call. Videos show up to :data:`MAX_FRAMES`
evenly spaced frames side by side. The grid also goes to the run's tensorboard / wandb
(the loop's ``engine.logger``), and ``validation/grid.json`` names its rows and columns.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from scfm.data.cache_batches import CacheBatches
from scfm.data.cache_validation import ValidationSet, read_validation, validation_noise
from scfm.devices import DTYPES
from scfm.fileio import atomic_write_json, save_png
from scfm.models.adapters import VelocityAdapter, adapter_class_for, dtype_kwargs, import_diffusers
from scfm.models.adapters import read_component_config as component_config
from scfm.sampling import sample
from scfm.train.config import DistillConfig
from scfm.train.sources import model_path
from scfm.train.step import autocast_context

VALIDATION_DIR = "validation"
"""The folder of the grids inside ``output_dir``."""
LOG_TAG = "validation/teacher_vs_student"
"""The tag the grids are logged under."""
MAX_FRAMES = 4
"""Frames of a video shown per cell (evenly spaced, first and last included)."""


def load_vae(path_or_id: str | os.PathLike, dtype: torch.dtype, local_files_only: bool = False) -> nn.Module:
    """Only the VAE of the pipeline at ``path_or_id``: the diffusers class its ``vae/config.json`` names
    (``_class_name``), from the ``vae`` subfolder, in ``dtype``, eval mode, frozen. ``ValueError`` when
    the pipeline has no readable VAE config or diffusers has no such class."""
    config = component_config(path_or_id, "vae", local_files_only) or {}
    name = config.get("_class_name")
    vae_cls = getattr(import_diffusers(), name, None) if isinstance(name, str) else None
    if vae_cls is None:
        raise ValueError(
            f"{os.fspath(path_or_id)!r} has no VAE scfm can load for validation images (vae/config.json names "
            f"{name!r}); set validate_every to 0"
        )
    vae = vae_cls.from_pretrained(
        os.fspath(path_or_id), subfolder="vae", local_files_only=local_files_only, **dtype_kwargs(dtype)
    )
    return vae.eval().requires_grad_(False)


def grid_cells(images: torch.Tensor) -> torch.Tensor:
    """Decoded images [B, 3, H, W] as they are; videos [B, 3, F, H, W] -> up to MAX_FRAMES frames side by side."""
    if images.dim() == 4:
        return images
    frames = images.shape[2]
    picks = torch.linspace(0, frames - 1, min(frames, MAX_FRAMES)).round().long().unique()
    return torch.cat(list(images[:, :, picks].unbind(2)), dim=-1)


def tile_grid(rows: list[torch.Tensor]) -> torch.Tensor:
    """Rows of images, each [P, 3, H, W] -> one image [3, R * H, P * W] (row r, column p), no gaps."""
    stacked = torch.stack(rows)  # [R, P, 3, H, W]
    r, p, c, h, w = stacked.shape
    return stacked.permute(2, 0, 3, 1, 4).reshape(c, r * h, p * w)


class DiffusersValidation:
    """``on_validate`` callback of :func:`scfm.train.loop.distill` for a diffusers teacher (module docstring).

    Args:
        config: the run's config (``output_dir``, ``calibration_steps``, ``plan.teacher_max``,
            ``mixed_precision``, ``batch_size``).
        adapter_cls: the teacher's adapter class (``compact_cond``, ``decode_latents``, ``default_guidance``).
        source: the run's cache source (its latent shapes, meta.json and guidance range).
        validation: the cache's validation set and its stored conditioning (:func:`read_validation`).
        vae: the pipeline's VAE, on ``device``.
        device: the engine's device.
    """

    def __init__(
        self,
        config: DistillConfig,
        adapter_cls: type[VelocityAdapter],
        source: CacheBatches,
        validation: tuple[ValidationSet, dict[str, torch.Tensor]],
        vae: nn.Module,
        device: torch.device,
    ) -> None:
        vset, stored = validation
        self.prompts, self.seeds = list(vset.prompts), list(vset.seeds)
        self.noise = validation_noise(vset.seeds, source.latent_shapes[vset.bucket])
        cond: dict[str, Any] = dict(stored)
        if source.guidance_range is not None:  # embedded guidance: the value the cache's teacher samples used
            guidance = source.meta.get("guidance")
            guidance = adapter_cls.default_guidance if guidance is None else float(guidance)
            cond["guidance"] = torch.full((len(self.prompts),), guidance)
        self.cond = adapter_cls.compact_cond(cond)
        self.adapter_cls, self.device = adapter_cls, device
        self.vae_holder = SimpleNamespace(vae=vae)  # what the adapter's decode_latents reads from a pipeline
        self.steps = tuple(sorted(set(config.calibration_steps)))
        self.teacher_steps = config.plan.teacher_max
        self.chunk = config.batch_size
        self.precision = config.mixed_precision
        self.out = Path(config.output_dir) / VALIDATION_DIR
        self.output_dir = config.output_dir
        self.labels = [f"teacher {self.teacher_steps} steps"] + [f"student {n} step{'s' * (n > 1)}" for n in self.steps]
        self.teacher_images: torch.Tensor | None = None

    def _render(self, model: nn.Module, steps: int, weights: Callable[[], AbstractContextManager]) -> torch.Tensor:
        """Decoded samples [P, 3, H, W'] float32 on the CPU of ``model`` at ``steps`` Euler steps, each call inside
        a fresh ``weights()`` context (the teacher switch, or the student pass)."""
        parts, rows = [], len(self.prompts)
        for start in range(0, rows, self.chunk):
            stop = min(start + self.chunk, rows)
            noise = self.noise[start:stop].to(self.device)
            cond = {
                k: (v[start:stop] if v.dim() > 0 and v.shape[0] == rows else v).to(self.device)
                for k, v in self.cond.items()
            }
            with weights(), autocast_context(self.device, self.precision):
                x0 = sample(model, noise, steps=steps, **cond)
            images = self.adapter_cls.decode_latents(self.vae_holder, x0.float())
            parts.append(grid_cells(images).float().cpu())
        return torch.cat(parts)

    def __call__(self, engine: Any) -> Path:
        """Write and log the grid at ``engine.step``; returns the PNG's path."""
        model = engine.model
        if self.teacher_images is None:
            self.teacher_images = self._render(model, self.teacher_steps, engine.step_fn.switch.teacher)
            layout = {"rows": self.labels, "columns": self.prompts, "noise_seeds": self.seeds}
            atomic_write_json(self.out / "grid.json", layout)
        rows = [self.teacher_images]
        student = getattr(model, "student_pass", nullcontext)  # baked CFG: the student samples unguided
        rows += [self._render(model, n, student) for n in self.steps]
        grid = tile_grid(rows)
        path = save_png(grid, self.out / f"step_{engine.step:08d}.png")
        if engine.logger is not None:
            engine.logger.log_image(LOG_TAG, grid, engine.step)
        return path


def diffusers_validation(
    config: DistillConfig, source: CacheBatches, device: torch.device
) -> DiffusersValidation | None:
    """The validation callback of a diffusers-teacher run, or None when ``validate_every`` is 0 or the run
    writes nothing (no ``output_dir``). Reads the cache's validation set, then loads the VAE onto ``device``.
    Build it on the main process only."""
    if not config.validate_every or not config.output_dir:
        return None
    path = model_path(config)
    adapter_cls = adapter_class_for(path, config.local_files_only)
    validation = read_validation(source.cache_dir)  # a missing or broken set fails before the VAE loads
    vae = load_vae(path, DTYPES[config.model_dtype], config.local_files_only).to(device)
    return DiffusersValidation(config, adapter_cls, source, validation, vae, device)
