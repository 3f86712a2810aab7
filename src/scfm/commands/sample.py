"""``scfm sample``: images from a diffusers pipeline with a distilled LoRA, Euler on scfm's time grid."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch

from scfm.commands._common import (
    add_device_flag,
    add_dtype_flag,
    add_lora_scale_flag,
    add_model_source_flags,
    add_shift_flag,
    check_positive,
    device_and_dtype,
    new_command,
    resolve_model_source,
)


def register(sub: Any) -> None:
    s = new_command(sub, "sample", help="sample a diffusers pipeline with a distilled LoRA on scfm's time grid")
    add_model_source_flags(
        s, lora_help="diffusers-format LoRA file (scfm export --format diffusers); none: the teacher"
    )
    s.add_argument("--prompt", action="append", required=True, help="prompt (repeatable)")
    s.add_argument("--steps", type=int, default=4, help="Euler steps (default 4)")
    add_lora_scale_flag(s)
    add_shift_flag(s)
    s.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="embedded guidance (Flux.1-dev) or CFG w (true-CFG families; 0 for a baked-CFG student) "
        "(default: the family's, 3.5)",
    )
    s.add_argument("--seed", type=int, default=0, help="noise seed of the first prompt (prompt i: seed + i; default 0)")
    s.add_argument("--height", type=int, default=None, help="pixels (default: the pipeline's)")
    s.add_argument("--width", type=int, default=None, help="pixels (default: the pipeline's)")
    add_dtype_flag(s)
    add_device_flag(s)
    s.add_argument("--out", type=Path, default=Path("sample.png"), help="PNG path (several prompts: <stem>_<i>.png)")
    s.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    for path in sample_to_files(args):
        print(f"wrote {path}")
    return 0


def sample_to_files(args: argparse.Namespace) -> list[Path]:
    """Sample every ``--prompt`` and write PNGs (``--out``, or ``<stem>_<i>.png`` for several prompts)."""
    from scfm.fileio import save_png
    from scfm.models.adapters import load_pipeline
    from scfm.pipelines.lora import load_lora
    from scfm.pipelines.sampling import sample_pipeline

    source = resolve_model_source(args, lora_required=False)
    check_positive(steps=args.steps, height=args.height, width=args.width)
    device, dtype = device_and_dtype(args.device, args.dtype)
    with tempfile.TemporaryDirectory(prefix="scfm-sample-") as tmp:
        lora = source.lora_file(Path(tmp))
        pipe, _ = load_pipeline(source.model, torch_dtype=dtype, local_files_only=source.local_files_only)
        pipe.to(device)
        if lora is not None:
            load_lora(pipe, lora)
    scale = source.lora_scale(args.steps, args.lora_scale)
    if lora is not None:
        calibrated = source.scales_from if args.steps in source.lora_scales else "default"
        how = "--lora-scale" if args.lora_scale is not None else calibrated
        print(f"LoRA scale {scale:g} at {args.steps} steps ({how})")
    generators = [torch.Generator().manual_seed(args.seed + i) for i in range(len(args.prompt))]
    images = sample_pipeline(
        pipe,
        args.prompt,
        args.steps,
        lora_scale=scale,
        shift=args.shift if args.shift is not None else source.shift,
        generator=generators,
        height=args.height,
        width=args.width,
        guidance=args.guidance,
    )
    out = Path(args.out)
    many = len(images) > 1
    paths = [out.with_name(f"{out.stem}_{i}{out.suffix or '.png'}") for i in range(len(images))] if many else [out]
    for image, path in zip(images, paths):
        save_png(image if image.dim() == 3 else torch.cat(list(image), dim=-1), path)  # video [F, 3, H, W]: a row
    return paths
