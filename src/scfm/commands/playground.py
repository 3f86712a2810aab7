"""``scfm playground``: a local web page showing the teacher and the distilled student side by side.

For the same noise (the seed), the teacher (LoRA scale 0: the base weights) is sampled at N steps and
the student at n steps (the LoRA at the run's calibrated scale for n unless set), both by Euler on
scfm's time grid with the same shift; each side is captioned with its wall time and NFE. A run of a
built-in model shows digits of a chosen class or a 2-D point cloud; a diffusers run (``--run``, or
``--model`` with ``--lora``) shows images for a prompt. A ``scfm demo`` folder is a valid ``--run``:
its run is ``lora/`` (digits) or ``run/`` (``--model flux-digits`` ...) and its ``metrics.json``
gives the quality-vs-steps plot under the images.

The page is a gradio app (the optional extra ``playground``). It binds to 127.0.0.1 unless
``--host`` says otherwise and is never shared through gradio's tunnel. One generation runs at a time:
the model (and a LoRA file uploaded in the page, which replaces the student's LoRA) is shared by
every browser tab.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch

from scfm.commands._common import (
    ModelSource,
    add_device_flag,
    add_dtype_flag,
    add_local_files_flag,
    add_weights_flag,
    check_positive,
    device_and_dtype,
    new_command,
    resolve_model_source,
)
from scfm.commands.playground_models import (
    DEMO_RUN_FOLDERS,
    METRICS_FILE,
    BuiltinPlayground,
    PipelinePlayground,
    Playground,
)
from scfm.commands.playground_page import build_page

INSTALL_HINT = (
    "scfm playground needs gradio: pip install 'scfm[playground]' (in a checkout: pip install -e '.[playground]')"
)


def register(sub: Any) -> None:
    p = new_command(
        sub,
        "playground",
        help="a local web page: teacher at N steps and student at n steps side by side, same noise (needs gradio)",
        description=__doc__.split("\n\n")[1],
    )
    group = p.add_argument_group("model (either --run, or --model with --lora)")
    group.add_argument(
        "--run",
        type=Path,
        default=None,
        help="a finished scfm distill output_dir (built-in or diffusers) or a scfm demo --out folder",
    )
    group.add_argument("--model", default=None, help="diffusers pipeline folder or Hub id (Flux / SD3)")
    group.add_argument("--lora", type=Path, default=None, help="diffusers-format LoRA file (scfm export)")
    add_weights_flag(group)
    add_local_files_flag(group)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--height", type=int, default=None, help="diffusers: pixels (default: the LoRA's training size)")
    p.add_argument("--width", type=int, default=None, help="diffusers: pixels (default: the LoRA's training size)")
    add_dtype_flag(p)
    add_device_flag(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    check_positive(port=args.port, height=args.height, width=args.width)
    playground = open_playground(args)
    page = build_page(playground)
    try:
        page.queue(default_concurrency_limit=1).launch(
            server_name=args.host,
            server_port=args.port,
            share=False,
            ssr_mode=False,
            quiet=True,
            prevent_thread_lock=True,
        )
    except OSError as err:
        reason = str(err).split(". ")[0]  # gradio's first sentence: "Cannot find empty port in range: ..."
        raise ValueError(f"cannot serve on {args.host}:{args.port} ({reason}); pass another --port") from err
    print(f"scfm playground: {playground.title}; open http://{args.host}:{args.port} (Ctrl+C stops)", flush=True)
    page.block_thread()
    return 0


# ---------------------------------------------------------------------- opening a run


def find_run(path: Path) -> tuple[Path, Path | None]:
    """(the run folder, its ``metrics.json`` or None) for a run folder or a ``scfm demo`` folder."""
    from scfm.distilled import CONFIG_FILE

    path = Path(path)
    if (path / CONFIG_FILE).is_file():
        beside = [path / METRICS_FILE] + ([path.parent / METRICS_FILE] if path.name in DEMO_RUN_FOLDERS else [])
        return path, next((m for m in beside if m.is_file()), None)
    for sub in DEMO_RUN_FOLDERS:
        if (path / sub / CONFIG_FILE).is_file():
            metrics = path / METRICS_FILE
            return path / sub, metrics if metrics.is_file() else None
    raise FileNotFoundError(
        f"--run {str(path)!r} holds no {CONFIG_FILE}, nor do its {' or '.join(DEMO_RUN_FOLDERS)} subfolders: pass "
        "the output_dir of a finished scfm distill run or a scfm demo --out folder"
    )


def open_playground(args: argparse.Namespace) -> Playground:
    """The teacher and student ``--run`` or ``--model`` / ``--lora`` name, loaded once."""
    from scfm.train.run_folder import load_run, read_run_config
    from scfm.train.sources import is_diffusers_teacher

    device, dtype = device_and_dtype(args.device, args.dtype)
    metrics = None
    if args.run is not None:
        if args.model is not None or args.lora is not None:
            resolve_model_source(args, lora_required=False)  # raises the shared "not both" message
        run_dir, metrics = find_run(args.run)
        config = read_run_config(run_dir)
        if not is_diffusers_teacher(config):
            student, config = load_run(run_dir, weights=args.weights)
            weights = args.weights or config.final_weights
            scales = student.lora_scales if weights == student.final_weights else {}
            source = ModelSource(
                config.teacher, None, run_dir, weights, lora_scales=scales, step_scale=student.step_scale
            )
            title = f"run {run_dir} (teacher {config.teacher}, LoRA {weights})"
            return BuiltinPlayground(student.to(device), config, source, title, metrics)
        args = argparse.Namespace(**{**vars(args), "run": run_dir})
    elif args.lora is None:
        raise ValueError("give --run RUN_DIR, or --model PIPELINE with --lora FILE (the student to compare)")
    return _open_pipeline(args, metrics, device, dtype)


def _open_pipeline(args: argparse.Namespace, metrics: Path | None, device: torch.device, dtype: torch.dtype):
    from scfm.models.adapters import load_pipeline
    from scfm.models.builtin import read_metadata
    from scfm.pipelines.lora import load_lora

    source = resolve_model_source(args, lora_required=True)
    keep = tempfile.TemporaryDirectory(prefix="scfm-playground-lora-")  # the run's export, reloaded if a swap fails
    lora = source.lora_file(Path(keep.name))
    header = read_metadata(lora)
    pipe, _ = load_pipeline(source.model, torch_dtype=dtype, local_files_only=source.local_files_only)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)  # the page shows its own progress
    load_lora(pipe, lora)
    size = (args.height, args.width)
    if args.height is None and args.width is None and header.get("modelspec.resolution"):
        from scfm.data.cache_inputs import parse_buckets

        bucket = parse_buckets(header["modelspec.resolution"])[0]  # the size the LoRA was trained at
        size = (bucket.height, bucket.width)
    what = f"run {source.run}" if source.run else f"LoRA {source.lora}"
    guidance = header.get("scfm.guidance")  # what the student is meant for: 0 for a baked-CFG LoRA
    return PipelinePlayground(
        pipe,
        lora,
        source,
        f"{what} on {source.model}",
        metrics,
        size=size,
        student_guidance=None if guidance is None else float(guidance),
        keep=keep,
    )
