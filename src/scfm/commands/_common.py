"""Flags shared by several commands, and how their values are turned into library arguments."""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from scfm.devices import DTYPES, resolve_device, resolve_dtype
from scfm.objective.step_scale import StepScale
from scfm.train.config import FINAL_WEIGHTS

DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
"""File name diffusers' ``load_lora_weights(folder)`` looks for by default."""


def new_command(sub: Any, name: str, help: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand parser with the flags every command has (``--debug``)."""
    parser = sub.add_parser(name, help=help, **kwargs)
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback")
    return parser


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")


def add_dtype_flag(parser: argparse.ArgumentParser, default: str = "auto", what: str = "pipeline dtype") -> None:
    choices = ("auto", *DTYPES) if default == "auto" else tuple(DTYPES)
    auto = "; auto: bf16 on CUDA, fp32 on CPU" if default == "auto" else ""
    parser.add_argument("--dtype", default=default, choices=choices, help=f"{what} (default {default}{auto})")


def add_weights_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weights",
        default=None,
        choices=FINAL_WEIGHTS,
        help="with --run: which LoRA copy (default: the run's final_weights, the copy its LoRA-scale table is for)",
    )


def add_local_files_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--local-files-only", action="store_true", help="never download (local folder or Hugging Face cache only)"
    )


def add_model_source_flags(parser: argparse.ArgumentParser, lora_help: str) -> None:
    """``--run RUN`` or ``--model PIPELINE --lora FILE``, with ``--weights`` and ``--local-files-only``."""
    group = parser.add_argument_group("model (either --run, or --model with --lora)")
    group.add_argument("--run", type=Path, default=None, help="output_dir of a finished diffusers scfm distill run")
    group.add_argument("--model", default=None, help="diffusers pipeline folder or Hub id (Flux / SD3 / Wan)")
    group.add_argument("--lora", type=Path, default=None, help=lora_help)
    add_weights_flag(group)
    add_local_files_flag(group)


@dataclass
class ModelSource:
    """Where the teacher pipeline and the student LoRA come from (``--run``, or ``--model`` with ``--lora``)."""

    model: str
    """Pipeline folder or Hub id."""
    lora: Path | None
    """Diffusers-format LoRA file; None: the run's LoRA (exported on demand) or, without a run, no LoRA."""
    run: Path | None = None
    weights: str | None = None
    """With a run: its LoRA copy (None: the run's ``final_weights``)."""
    local_files_only: bool = False
    lora_scales: dict[int, float] = field(default_factory=dict)
    """The calibrated LoRA scale per step count: the run's, or the ``scfm.lora_scales`` of the LoRA file's header
    (empty without either)."""
    shift: float | None = None
    """The sampling shift a LoRA file's header names (``scfm.shift``); None: the family default."""
    scales_from: str = "the run's calibration"
    """Where ``lora_scales`` come from, for messages."""

    step_scale: StepScale = field(default_factory=StepScale)
    """The LoRA strength the run trained each step count at (built-in runs; off: 1 at every step count)."""

    def lora_scale(self, steps: int, given: float | None) -> float:
        """``given`` (``--lora-scale``) if set, else the calibrated scale for ``steps``, else the trained step
        scale (1 for runs without one)."""
        if given is not None:
            return float(given)
        return self.lora_scales.get(steps, float(self.step_scale.for_steps(steps)))

    def lora_file(self, tmp: Path) -> Path | None:
        """The LoRA file to load; a run's LoRA copy is exported into ``tmp`` first (loads the run's transformer)."""
        if self.run is None:
            return self.lora
        from scfm.commands.export import export_run

        return export_run(
            self.run, "diffusers", tmp / DIFFUSERS_WEIGHT_NAME, weights=self.weights, dtype="fp32", card=False
        )


def resolve_model_source(args: argparse.Namespace, lora_required: bool) -> ModelSource:
    """Check ``--run`` or ``--model`` (+ ``--lora``) and say where teacher and LoRA come from; reads configs only."""
    from scfm.distilled import read_saved_config
    from scfm.train.run_folder import read_run_config
    from scfm.train.sources import model_path

    if args.run is not None:
        if args.model is not None or args.lora is not None:
            raise ValueError(
                "pass either --run RUN_DIR or --model PATH --lora FILE, not both "
                "(--run uses the run's own LoRA; choose it with --weights)"
            )
        config = read_run_config(args.run, diffusers_only=True)
        local = config.local_files_only or args.local_files_only
        weights = args.weights or config.final_weights
        scales = {int(n): float(k) for n, k in read_saved_config(args.run).get("lora_scales", {}).items()}
        if weights != config.final_weights and scales:
            print(
                f"note: the run's LoRA-scale table is calibrated for its final weights ({config.final_weights}), "
                f"not --weights {weights}: scale 1 unless --lora-scale"
            )
            scales = {}
        return ModelSource(model_path(config), None, args.run, weights, local, scales)
    if args.model is None or (lora_required and args.lora is None):
        need = "--model (pipeline folder / Hub id) with --lora (diffusers LoRA .safetensors)"
        raise ValueError(f"give exactly one of --run RUN_DIR or {need}" + ("" if lora_required else " or none"))
    if args.lora is not None and not Path(args.lora).is_file():
        raise FileNotFoundError(
            f"--lora {str(args.lora)!r} does not exist; write one with scfm export --format diffusers"
        )
    if args.lora is None:
        return ModelSource(str(args.model), None, local_files_only=args.local_files_only)
    from scfm.export import read_usage

    scales, shift = read_usage(args.lora)
    return ModelSource(
        str(args.model),
        args.lora,
        local_files_only=args.local_files_only,
        lora_scales=scales,
        shift=shift,
        scales_from="the file's calibration",
    )


def device_and_dtype(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """``--device`` and ``--dtype`` resolved (see :mod:`scfm.devices`)."""
    where = resolve_device(device)
    return where, resolve_dtype(dtype, where)


def check_positive(**values: int | None) -> None:
    """Raise ``ValueError`` naming the flag when a given value is < 1."""
    for name, value in values.items():
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} {value} must be a positive integer")


def shift_value(text: str) -> float | str:
    """``--shift``: a number > 0, or 'auto' (the resolution shift for the image size)."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or 'auto'") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0 (1 = no shift)")
    return value


def add_shift_flag(parser: argparse.ArgumentParser, name: str = "--shift", what: str = "the student's") -> None:
    parser.add_argument(
        name,
        type=shift_value,
        default=None,
        help=f"fixed shift of {what} Euler grid, or 'auto' (the resolution shift for the image size); "
        "default: the model family's (Flux 3.25, SD3 and Wan 3.0: the shifted grids students train on)",
    )


def add_lora_scale_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lora-scale",
        type=float,
        default=None,
        help="LoRA scale (default: the run's calibrated scale for the step count, else 1.0)",
    )


@contextmanager
def stage(name: str, enabled: bool = True) -> Iterator[None]:
    """One line when a stage of a long command starts and one with its seconds when it ends (``enabled``)."""
    if not enabled:
        yield
        return
    print(f"{name} ...", flush=True)
    start = time.perf_counter()
    yield
    print(f"{name}: done in {time.perf_counter() - start:.0f} s", flush=True)
