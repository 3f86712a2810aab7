"""``scfm distill CONFIG.yaml``: distill the teacher a config names, from the data it names."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from scfm.commands._common import new_command
from scfm.train.config import DistillConfig


def register(sub: Any) -> None:
    p = new_command(
        sub,
        "distill",
        help="distill a teacher (built-in, or diffusers:<model> from a teacher cache) by a YAML config (configs/)",
    )
    p.add_argument("config", type=Path, nargs="?", help="YAML file of DistillConfig fields")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field (repeatable)"
    )
    p.add_argument(
        "--resume", default=None, help="'latest' (newest good checkpoint in output_dir) or a checkpoint folder"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="output_dir holds another run: move it aside to <output_dir>.old-<UTC time> (nothing is deleted)",
    )
    p.add_argument(
        "--allow-config-change",
        action="store_true",
        help="with --resume: continue with config values that differ from the checkpoint's (printed)",
    )
    p.add_argument(
        "--no-calibrate",
        action="store_true",
        help="skip the LoRA-scale calibration at the end of the run (the same as --set calibrate=false)",
    )
    p.set_defaults(handler=run)


def _process_device() -> torch.device:
    """Join the process group that `accelerate launch` / torchrun set up; returns this rank's device."""
    from accelerate import PartialState

    return PartialState().device


def run(args: argparse.Namespace) -> int:
    from scfm.train.engine import world
    from scfm.train.loop import distill
    from scfm.train.run_folder import claim_output_dir
    from scfm.train.sources import build_data, build_teacher, is_diffusers_teacher
    from scfm.train.validation import diffusers_validation
    from scfm.train.yaml_config import load_config

    overrides = [*args.set, "calibrate=false"] if args.no_calibrate else args.set
    config = load_config(args.config, overrides)  # every field validated before any work
    device = torch.device(config.device) if config.device != "auto" else _process_device()
    config.device = str(device)
    config.check_runnable(device)  # quantization / optimizer libraries and device, before any weight loads
    rank, size = world()
    if config.output_dir and args.resume is None and not args.overwrite and rank == 0:
        claim_output_dir(config.output_dir)  # another run's folder stops here, before any weights load
    data = build_data(config)  # a cache (and its validation prompts) is checked before any weight loads
    quantized = config.base_quantization != "none"  # then the base reaches the device only as it is quantized
    teacher = build_teacher(config, None if quantized else device)
    if is_diffusers_teacher(config):  # validation images: the VAE on the main process only
        on_validate = diffusers_validation(config, data, device) if rank == 0 else None
    else:
        on_validate = validation_fn(config)
    if rank == 0:
        print(f"scfm distill: {size} process(es), device {device}, global batch {config.batch_size}")
    distill(
        teacher,
        data,
        config,
        resume=args.resume,
        on_validate=on_validate,
        overwrite=args.overwrite,
        allow_config_change=args.allow_config_change,
    )
    if config.output_dir and rank == 0:
        print(f"wrote the LoRA, both EMAs and checkpoints to {config.output_dir}")
    return 0


def validation_fn(config: DistillConfig) -> Callable[[Any], None] | None:
    """A callback writing a PNG of student samples at 1, 2, 4 steps (built-in digits or 2-D runs)."""
    if not config.output_dir:
        return None
    from scfm.eval.plots import save_comparison_grid, save_scatter_2d
    from scfm.sampling import sample

    out = Path(config.output_dir) / "validation"
    gen = torch.Generator().manual_seed(1234)
    digits = config.data == "digits"
    noise = torch.randn(20, 1, 8, 8, generator=gen) if digits else torch.randn(2000, 2, generator=gen)
    labels = torch.arange(10).repeat(2)

    def validate(engine: Any) -> None:
        device = engine.device
        cond = {"label": labels.to(device)} if digits else {}
        shots = [
            (f"student euler {n}", sample(engine.model, noise.to(device), steps=n, **cond).cpu()) for n in (1, 2, 4)
        ]
        engine.model.train()
        path = out / f"step_{engine.step:08d}.png"
        (save_comparison_grid if digits else save_scatter_2d)(shots, path)
        if engine.logger is not None:
            engine.logger.log_png("validation/student", path, engine.step)

    return validate
