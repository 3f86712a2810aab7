"""The playground's models: what one generation asks for, and the built-in / diffusers samplers behind the page
(``scfm playground``, :mod:`scfm.commands.playground`)."""

from __future__ import annotations

import itertools
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scfm.commands._common import (
    ModelSource,
)

STUDENT_MAX_STEPS = 8
TEACHER_MAX_STEPS = 50
STUDENT_STEPS = 4
"""Default student steps."""
TEACHER_STEPS = 32
"""Default teacher steps (the demos' teacher reference)."""
IMAGE_SIDE = 128
"""Pixels each generated image is drawn at, at least (small images are enlarged, nearest neighbour)."""
DEMO_RUN_FOLDERS = ("lora", "run")
"""Where a ``scfm demo`` folder keeps its run: ``lora/`` (built-in digits), ``run/`` (diffusers pipelines)."""
METRICS_FILE = "metrics.json"
MIXED = "mixed"
"""The class choice "one of each digit in turn"."""
DEFAULT_PROMPT = "a photo of a red fox in the snow"


# ---------------------------------------------------------------------- what one generation asks for


@dataclass
class Request:
    """One press of the button: both sides share the seed, batch, shift and condition."""

    teacher_steps: int
    student_steps: int
    lora_scale: float
    shift: float
    condition: str
    """A digit 0-9 or ``MIXED`` (built-in digits), the prompt (diffusers); unused for 2-D runs."""
    seed: int
    batch: int
    teacher_guidance: float | None = None
    student_guidance: float | None = None


@dataclass
class Shot:
    """One side's result: the PNG, the wall time of the sampling, model evaluations per sample."""

    path: Path
    seconds: float
    nfe: int


def whole_number(value: Any, name: str, low: int, high: int | None = None) -> int:
    """``value`` as an int in [low, high], else ``ValueError`` naming the page field."""
    bound = f"from {low} to {high}" if high is not None else f"{low} or more"
    if value is None or not float(value).is_integer() or value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be a whole number {bound}, not {value}")
    return int(value)


def _number(value: Any, name: str, positive: bool = False) -> float:
    if value is None or not math.isfinite(float(value)) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a number {'> 0' if positive else '>= 0'}, not {value}")
    return float(value)


# ---------------------------------------------------------------------- the models behind the page


class Playground:
    """Teacher and student of one run, sampled on request into PNGs under a temporary folder."""

    condition: str = "none"
    """What the page asks for besides noise: 'class' (built-in digits), 'prompt' (diffusers) or 'none' (2-D)."""
    max_batch: int = 64
    default_batch: int = 16
    default_shift: float = 1.0
    """1: no shift, what :func:`scfm.sample` uses for a model that is not a diffusers adapter."""
    default_guidance: tuple[float | None, float | None] = (None, None)
    """Guidance of the teacher and of the student (None: the model takes none)."""
    module: nn.Module
    """The network every sampling step calls once (its calls drive the progress bar)."""

    def __init__(self, source: ModelSource, title: str, metrics: Path | None) -> None:
        self.source = source
        self.title = title
        self.metrics = metrics
        self._folder = tempfile.TemporaryDirectory(prefix="scfm-playground-")
        self.folder = Path(self._folder.name)
        self._count = itertools.count()

    def default_scale(self, steps: int) -> float:
        """The student's LoRA scale for ``steps`` when none is given (the calibrated one, else 1)."""
        return self.source.lora_scale(steps, None)

    def scale_note(self, steps: int) -> str:
        if steps in self.source.lora_scales:
            return f"{self.source.scales_from} for {steps} steps"
        if self.source.step_scale.enabled:
            return f"the run's trained step scale for {steps} steps"
        return f"no calibrated scale for {steps} steps"

    def request(self, teacher_steps, student_steps, lora_scale, shift, condition, seed, batch, guidance=(None, None)):
        """A checked :class:`Request` from the page's values; ``ValueError`` names the field that is wrong."""
        if self.condition == "prompt" and not str(condition or "").strip():
            raise ValueError("the prompt is empty; type what to draw")
        if self.condition == "class" and str(condition) not in (MIXED, *map(str, range(10))):
            raise ValueError(f"class {condition!r} must be {MIXED} or a digit 0-9")
        if lora_scale is None or not math.isfinite(float(lora_scale)):
            raise ValueError(f"LoRA scale must be a number, not {lora_scale}")
        guides = [
            None if default is None else _number(g, f"{side} guidance")
            for side, g, default in zip(("teacher", "student"), guidance, self.default_guidance)
        ]
        return Request(
            teacher_steps=whole_number(teacher_steps, "teacher steps", 1, TEACHER_MAX_STEPS),
            student_steps=whole_number(student_steps, "student steps", 1, STUDENT_MAX_STEPS),
            lora_scale=float(lora_scale),
            shift=_number(shift, "shift", positive=True),
            condition=str(condition or "").strip(),
            seed=whole_number(seed, "seed", 0),
            batch=whole_number(batch, "batch size", 1, self.max_batch),
            teacher_guidance=guides[0],
            student_guidance=guides[1],
        )

    def generate(self, side: str, request: Request, on_call: Callable[[int], None] | None = None) -> Shot:
        """Sample ``side`` ('teacher' or 'student') for ``request`` and draw it; ``on_call(i)`` after model call i."""
        steps = request.teacher_steps if side == "teacher" else request.student_steps
        start = time.perf_counter()
        with _calls_reported(self.module, on_call):
            images = self.sample(side, steps, request)
        seconds = time.perf_counter() - start
        path = self.folder / f"{next(self._count):05d}_{side}.png"
        self.draw(images, path, f"{side}, {steps} steps")
        return Shot(path, seconds, steps * self.passes(side, request))

    def passes(self, side: str, request: Request) -> int:
        """Model evaluations per sampling step of one sample."""
        return 1

    def sample(self, side: str, steps: int, request: Request) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def draw(self, images: torch.Tensor, path: Path, title: str) -> None:
        """Images [B, C, H, W] in [-1, 1] as one PNG grid, about square, each at least ``IMAGE_SIDE`` pixels."""
        from scfm.eval.plots import save_image_grid

        nrow = math.ceil(math.sqrt(images.shape[0]))
        save_image_grid(images, path, nrow=nrow, scale=max(1, IMAGE_SIDE // max(images.shape[-2:])))

    def swap_lora(self, path: Path) -> None:  # pragma: no cover - abstract
        """Replace the student's LoRA by the file ``path``; ``ValueError`` (old LoRA kept) if it does not fit."""
        raise NotImplementedError

    def _adopt(self, path: Path) -> None:
        """After a swap: the calibrated scales (and shift) of the new file's ``scfm.*`` header, if any."""
        from scfm.export import read_usage

        scales, shift = read_usage(path)
        self.source = replace(
            self.source, lora=path, lora_scales=scales, shift=shift, scales_from="the file's calibration"
        )

    def quality_plot(self) -> Path | None:
        """The run's quality against steps (``metrics.json`` rows), drawn once; None when there is none."""
        from scfm.eval.plots import plot_quality_vs_steps

        if self.metrics is None:
            return None
        path = self.folder / "quality_vs_steps.png"
        if not path.is_file():
            try:
                metrics = json.loads(self.metrics.read_text())
                plot_quality_vs_steps(metrics["rows"], path, floor=metrics.get("fd_floor"))
            except (ValueError, KeyError, TypeError):  # unreadable, or no row with an FD: nothing to plot
                return None
        return path

    def scales_line(self) -> str:
        scales = " · ".join(f"{n} step{'s' * (n > 1)} {s:g}" for n, s in sorted(self.source.lora_scales.items()))
        return (
            f"LoRA scale per step count ({self.source.scales_from}): {scales}"
            if scales
            else "LoRA scale: 1 (no calibration)"
        )


class BuiltinPlayground(Playground):
    """A run of a built-in model: digits (a class per sample) or a 2-D point cloud (one panel of ``batch`` points)."""

    def __init__(self, student: Any, config: Any, source: ModelSource, title: str, metrics: Path | None) -> None:
        super().__init__(source, title, metrics)
        self.student = student
        self.module = student.model
        model_config = student.model.config
        if config.data == "digits":
            side = model_config.image_size
            self.condition, self.shape = "class", (model_config.channels, side, side)
        else:
            self.condition, self.shape = "none", (model_config.dim,)
            self.max_batch, self.default_batch = 10000, 2000

    def sample(self, side: str, steps: int, request: Request) -> torch.Tensor:
        from scfm.sampling import sample

        device = next(self.student.parameters()).device
        noise = torch.randn(request.batch, *self.shape, generator=torch.Generator().manual_seed(request.seed))
        cond = {}
        if self.condition == "class":
            labels = (
                torch.arange(request.batch) % 10
                if request.condition == MIXED
                else torch.full((request.batch,), int(request.condition))
            )
            cond["label"] = labels.to(device)
        scale = 0.0 if side == "teacher" else request.lora_scale
        x0 = sample(self.student, noise.to(device), steps=steps, shift=request.shift, lora_scale=scale, **cond)
        return x0.float().cpu()

    def draw(self, images: torch.Tensor, path: Path, title: str) -> None:
        if self.condition == "class":
            return super().draw(images, path, title)
        from scfm.eval.plots import save_scatter_2d

        save_scatter_2d([(title, images)], path)

    def swap_lora(self, path: Path) -> None:
        from scfm.fileio import load_safetensors
        from scfm.weights.lora import load_lora_state_dict, lora_state_dict

        tensors = load_safetensors(path)
        saved = {k: v.clone() for k, v in lora_state_dict(self.student.model).items()}
        try:
            load_lora_state_dict(self.student.model, tensors)
        except ValueError:
            load_lora_state_dict(self.student.model, saved)
            raise
        self._adopt(path)


class PipelinePlayground(Playground):
    """A diffusers pipeline with the run's LoRA: images for a prompt, teacher at LoRA scale 0."""

    condition = "prompt"
    max_batch = 16
    default_batch = 4

    def __init__(self, pipe: Any, lora: Path, source: ModelSource, title: str, metrics: Path | None, **kw) -> None:
        """``kw``: ``size`` (height, width; None: the pipeline's), ``student_guidance`` (None: the family's),
        ``keep`` (an object to keep alive with the playground: the temporary folder of ``lora``)."""
        from scfm.models.adapters import adapter_for_pipeline
        from scfm.pipelines.sampling import resolve_shift

        super().__init__(source, title, metrics)
        self.pipe, self.lora, self.keep = pipe, lora, kw.get("keep")
        self.module = pipe.transformer
        self.adapter_cls = adapter_for_pipeline(pipe)
        self.height, self.width = kw.get("size", (None, None))
        family = float(self.adapter_cls.default_guidance)
        student = kw.get("student_guidance")
        self.default_guidance = (family, family if student is None else float(student))
        self.default_shift = resolve_shift(self.adapter_cls, pipe, source.shift, self.height, self.width)
        self.prompt = default_prompt(source.model)

    def passes(self, side: str, request: Request) -> int:
        return self.adapter_cls.passes_per_step(
            request.teacher_guidance if side == "teacher" else request.student_guidance
        )

    def sample(self, side: str, steps: int, request: Request) -> torch.Tensor:
        from scfm.pipelines.sampling import sample_pipeline

        images = sample_pipeline(
            self.pipe,
            [request.condition] * request.batch,
            steps,
            lora_scale=0.0 if side == "teacher" else request.lora_scale,
            shift=request.shift,
            generator=[torch.Generator().manual_seed(request.seed + i) for i in range(request.batch)],
            height=self.height,
            width=self.width,
            guidance=request.teacher_guidance if side == "teacher" else request.student_guidance,
        )
        if images.dim() == 5:  # video [B, F, 3, H, W]: the frames in a row
            images = images.permute(0, 2, 3, 1, 4).flatten(3)
        return images * 2 - 1

    def swap_lora(self, path: Path) -> None:
        from scfm.pipelines.lora import load_lora

        self.pipe.unload_lora_weights()
        try:
            load_lora(self.pipe, path)
        except Exception as err:  # diffusers raises many kinds (IndexError, KeyError, ...) for a foreign file
            self.pipe.unload_lora_weights()
            load_lora(self.pipe, self.lora)
            raise ValueError(f"{path.name} does not fit this model ({err}); the previous LoRA is kept") from err
        self.lora = path
        self._adopt(path)
        self.default_shift = self.source.shift or self.default_shift


@contextmanager
def _calls_reported(module: nn.Module, on_call: Callable[[int], None] | None) -> Iterator[None]:
    """Inside the block, ``on_call(i)`` runs after the i-th forward call of ``module``."""
    if on_call is None:
        yield
        return
    calls = itertools.count(1)
    handle = module.register_forward_hook(lambda *_: on_call(next(calls)))
    try:
        yield
    finally:
        handle.remove()


def default_prompt(model: str) -> str:
    """A prompt the model knows: a digit prompt for the shipped miniature pipelines."""
    from scfm.models.miniature import MINIATURE_MODELS, digits_prompt, shipped_pipeline_path

    for name in MINIATURE_MODELS:
        if Path(model).resolve() == shipped_pipeline_path(name).resolve():
            return digits_prompt(7)
    return DEFAULT_PROMPT
