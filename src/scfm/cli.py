"""Command line: ``scfm demo | pretrain | distill | generate-data | export | sample | eval``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from scfm.data.batches import digits_batches, toy2d_batches
    from scfm.models.builtin import build_builtin, save_builtin
    from scfm.train.pretrain import PretrainConfig, pretrain_flow_matching

    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)  # parameter init of the fresh model
    if args.model == "digits":
        model, batches = build_builtin("digits_dit"), digits_batches(args.batch_size, gen)
    else:
        model, batches = build_builtin("mlp2d"), toy2d_batches(args.model, args.batch_size, gen)
    cfg = PretrainConfig(steps=args.steps, lr=args.lr, fm_ratio=args.fm_ratio)
    start = time.perf_counter()
    ema = pretrain_flow_matching(model, batches, cfg, gen)
    meta = {"command": " ".join(["scfm", *sys.argv[1:]]), "seconds": f"{time.perf_counter() - start:.0f}"}
    path = save_builtin(ema, args.out, extra=meta)
    print(f"wrote {path}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from scfm.demo import run_demo

    metrics = run_demo(args.out, max_steps=args.steps, eval_samples=args.eval_samples, seed=args.seed)
    print(f"{'model':14} {'solver':8} {'steps':>5} {'nfe':>4} {'FD':>8} {'acc':>6} {'scale':>5}")
    for r in metrics["rows"]:
        scale = f"{r['lora_scale']:5.2f}" if "lora_scale" in r else ""
        print(
            f"{r['model']:14} {r['solver']:8} {r['steps']:5d} {r['nfe']:4d} {r['fd']:8.3f} {r['class_acc']:6.3f} {scale}"
        )
    print(
        f"FD floor {metrics['fd_floor']:.3f}; training {metrics['train_seconds']:.0f} s; total {metrics['total_seconds']:.0f} s"
    )
    failed = [c["check"] for c in metrics["checks"] if not c["pass"]]
    print("all quality checks pass" if not failed else "checks not met: " + "; ".join(failed))
    print(f"wrote {args.out}/metrics.json, report.md, PNGs and lora/")
    return 0


def _init_processes() -> torch.device:
    """Join the process group that `accelerate launch` / torchrun set up; returns this rank's device."""
    from accelerate import PartialState

    return PartialState().device


def _cmd_distill(args: argparse.Namespace) -> int:
    from scfm.train.builtin_run import build_data, build_teacher, validation_fn
    from scfm.train.loop import distill
    from scfm.train.yaml_config import load_config

    config = load_config(args.config, args.set)  # every field validated before any work
    device = torch.device(config.device) if config.device != "auto" else _init_processes()
    if config.device == "auto":
        config.device = str(device)
    from scfm.train.engine import world

    rank, size = world()
    if config.teacher.startswith("diffusers:"):
        from scfm.train.diffusers_run import build_run

        teacher, data, on_validate = build_run(config, device)
    else:
        teacher, data, on_validate = (
            build_teacher(config, device),
            build_data(config),
            validation_fn(config, config.output_dir),
        )
    if rank == 0:
        print(f"scfm distill: {size} process(es), device {device}, global batch {config.batch_size}")
    try:
        distill(teacher, data, config, resume=args.resume, on_validate=on_validate)
    except KeyboardInterrupt:
        return 130
    if config.output_dir and rank == 0:
        print(f"wrote the LoRA, both EMAs and checkpoints to {config.output_dir}")
    return 0


def _cmd_generate_data(args: argparse.Namespace) -> int:
    from scfm.data.teacher_cache import GenerateConfig, generate_cache, parse_buckets

    config = GenerateConfig(
        model=args.model,
        out=args.out,
        prompts=args.prompts,
        images=args.images,
        steps=args.steps,
        guidance=args.guidance,
        buckets=parse_buckets(args.buckets),
        per_prompt=args.per_prompt,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        seed=args.seed,
        previews=args.previews,
        dtype=args.dtype,
        device=args.device,
        cpu_offload=args.cpu_offload,
        local_files_only=args.local_files_only,
        max_samples=args.max_samples,
    )
    s = generate_cache(config)
    print(
        f"{args.out}: {s.generated} sample(s) generated, {s.skipped} already cached, {s.total - s.skipped - s.generated} left"
    )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from scfm.export_cli import export_run

    path = export_run(
        args.run, args.format, args.out, weights=args.weights, dtype=args.dtype, lora_scale=args.lora_scale
    )
    print(f"wrote {path}")
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from scfm.export_cli import SampleRequest, sample_cli

    req = SampleRequest(
        prompts=args.prompt,
        out=args.out,
        run=args.run,
        model=args.model,
        lora=args.lora,
        weights=args.weights,
        steps=args.steps,
        lora_scale=args.lora_scale,
        shift=args.shift,
        guidance=args.guidance,
        seed=args.seed,
        height=args.height,
        width=args.width,
        dtype=args.dtype,
        device=args.device,
        local_files_only=args.local_files_only,
    )
    for path in sample_cli(req):
        print(f"wrote {path}")
    return 0


def _add_diffusers_commands(sub: argparse._SubParsersAction) -> None:
    """generate-data, export, sample: the diffusers-model (Flux / SD3) workflow."""
    g = sub.add_parser(
        "generate-data",
        help="cache teacher samples (or captioned images) as latents + text embeddings for scfm distill",
    )
    g.add_argument("--model", required=True, help="diffusers pipeline folder or Hub id (Flux / SD3)")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--prompts", type=Path, help='.txt (one prompt a line) or .jsonl ({"prompt": ..., "seed": optional int})'
    )
    src.add_argument(
        "--images", type=Path, help="folder of images with same-stem .txt captions (few-shot mode; no teacher sampling)"
    )
    g.add_argument("--out", type=Path, required=True, help="cache folder (rerun to resume or extend)")
    g.add_argument("--steps", type=int, default=32, help="teacher sampling steps (default 32)")
    g.add_argument(
        "--guidance",
        type=float,
        default=3.5,
        help="Flux: embedded guidance; SD3: CFG w of v_c + w (v_c - v_neg), i.e. pipeline guidance_scale = w + 1 (default 3.5)",
    )
    g.add_argument("--buckets", default="512x512", help="WIDTHxHEIGHT sizes, comma separated (default 512x512)")
    g.add_argument(
        "--per-prompt", type=int, default=1, help="samples per prompt and bucket (default 1; ignored with --images)"
    )
    g.add_argument("--shard-size", type=int, default=64, help="samples per shard file (default 64)")
    g.add_argument("--batch-size", type=int, default=4, help="prompts per pipeline call (default 4)")
    g.add_argument("--seed", type=int, default=0, help="base seed of the per-sample seeds (default 0)")
    g.add_argument("--previews", action="store_true", help="also write previews/<id>.png")
    g.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"), help="pipeline dtype (default bf16)")
    g.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu', 'cuda:1', ...")
    g.add_argument(
        "--cpu-offload",
        action="store_true",
        help="diffusers model CPU offload (for GPUs too small for the whole pipeline)",
    )
    g.add_argument(
        "--local-files-only", action="store_true", help="never download (local folder or Hugging Face cache only)"
    )
    g.add_argument(
        "--max-samples",
        type=int,
        default=None,
        help="stop after this many new samples (default all; rerun to continue)",
    )
    g.set_defaults(func=_cmd_generate_data)
    e = sub.add_parser("export", help="write a diffusers run's LoRA for diffusers or ComfyUI, or a fused transformer")
    e.add_argument("--run", type=Path, required=True, help="output_dir of a finished scfm distill run")
    e.add_argument("--format", required=True, choices=("diffusers", "comfyui", "fused"))
    e.add_argument("--out", type=Path, required=True, help="a .safetensors file or a folder (fused: a folder)")
    e.add_argument(
        "--weights",
        default="slow_ema",
        choices=("slow_ema", "fast_ema", "student"),
        help="which LoRA copy (default slow_ema)",
    )
    e.add_argument(
        "--dtype",
        default=None,
        choices=("fp32", "bf16", "fp16"),
        help="cast (default: LoRA float32; fused: the run's model_dtype)",
    )
    e.add_argument(
        "--lora-scale", type=float, default=1.0, help="fused only: LoRA scale merged into the weights (default 1.0)"
    )
    e.set_defaults(func=_cmd_export)
    s = sub.add_parser("sample", help="sample a diffusers pipeline with a distilled LoRA on scfm's time grid")
    s.add_argument(
        "--run", type=Path, default=None, help="output_dir of a diffusers scfm distill run (or use --model/--lora)"
    )
    s.add_argument("--model", default=None, help="pipeline folder or Hub id")
    s.add_argument(
        "--lora",
        type=Path,
        default=None,
        help="diffusers-format LoRA file (scfm export --format diffusers); none: the teacher",
    )
    s.add_argument(
        "--weights",
        default="slow_ema",
        choices=("slow_ema", "fast_ema", "student"),
        help="with --run: which LoRA copy (default slow_ema)",
    )
    s.add_argument("--prompt", action="append", required=True, help="prompt (repeatable)")
    s.add_argument("--steps", type=int, default=4, help="Euler steps (default 4)")
    s.add_argument(
        "--lora-scale", type=float, default=1.0, help="LoRA scale (default 1.0; few steps often like 1-1.75)"
    )
    s.add_argument("--shift", type=float, default=1.0, help="fixed shift of the time grid (default 1.0 = none)")
    s.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="Flux: embedded guidance (default 3.5); SD3: CFG w (default 3.5; 0 for a baked-CFG student)",
    )
    s.add_argument("--seed", type=int, default=0, help="noise seed of the first prompt (prompt i: seed + i; default 0)")
    s.add_argument("--height", type=int, default=None, help="pixels (default: the pipeline's)")
    s.add_argument("--width", type=int, default=None, help="pixels (default: the pipeline's)")
    s.add_argument(
        "--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"), help="auto: bf16 on CUDA, fp32 on CPU"
    )
    s.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu', 'cuda:1', ...")
    s.add_argument(
        "--local-files-only", action="store_true", help="never download (local folder or Hugging Face cache only)"
    )
    s.add_argument("--out", type=Path, default=Path("sample.png"), help="PNG path (several prompts: <stem>_<i>.png)")
    s.set_defaults(func=_cmd_sample)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scfm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="distill the shipped digits teacher and evaluate it (about 5 min on 2 CPU cores)")
    d.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    d.add_argument("--steps", type=int, default=None, help="distillation steps (default: the digits preset)")
    d.add_argument("--eval-samples", type=int, default=1000, help="generated digits per evaluated sampler")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_cmd_demo)
    t = sub.add_parser(
        "distill",
        help="distill a teacher (built-in, or diffusers:<model> from a teacher cache) from a YAML config (see configs/)",
    )
    t.add_argument("config", type=Path, nargs="?", help="YAML file of DistillConfig fields")
    t.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field (repeatable)"
    )
    t.add_argument(
        "--resume", default=None, help="'latest' (newest good checkpoint in output_dir) or a checkpoint folder"
    )
    t.set_defaults(func=_cmd_distill)
    p = sub.add_parser("pretrain", help="train a built-in teacher by flow matching")
    p.add_argument("--model", default="digits", help="'digits' or a 2-D toy name (checkerboard, moons, ...)")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--fm-ratio",
        type=float,
        default=1.0,
        help="fraction with the plain FM target; < 1 folds SCFM shortcut targets into pretraining",
    )
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_cmd_pretrain)
    _add_diffusers_commands(sub)  # generate-data, export, sample (scfm.data.teacher_cache, scfm.export_cli)
    from scfm.eval.t2i_cli import add_eval_parser  # `scfm eval` (text-to-image CLIP / dFID / FID)

    add_eval_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
