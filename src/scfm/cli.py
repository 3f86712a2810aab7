"""Command line: ``scfm demo | pretrain | distill | sample``."""

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
    print(f"{'model':8} {'solver':8} {'steps':>5} {'nfe':>4} {'FD':>8} {'acc':>6}")
    for r in metrics["rows"]:
        print(f"{r['model']:8} {r['solver']:8} {r['steps']:5d} {r['nfe']:4d} {r['fd']:8.3f} {r['class_acc']:6.3f}")
    print(f"FD floor {metrics['fd_floor']:.3f}; training {metrics['train_seconds']:.0f} s; total {metrics['total_seconds']:.0f} s")
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
    teacher = build_teacher(config, device)
    data = build_data(config)
    if rank == 0:
        print(f"scfm distill: {size} process(es), device {device}, global batch {config.batch_size}")
    try:
        distill(teacher, data, config, resume=args.resume, on_validate=validation_fn(config, config.output_dir))
    except KeyboardInterrupt:
        return 130
    if config.output_dir and rank == 0:
        print(f"wrote the LoRA, both EMAs and checkpoints to {config.output_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scfm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="distill the shipped digits teacher and evaluate it (about 5 min on 2 CPU cores)")
    d.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    d.add_argument("--steps", type=int, default=None, help="distillation steps (default: the digits preset)")
    d.add_argument("--eval-samples", type=int, default=1000, help="generated digits per evaluated sampler")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_cmd_demo)
    t = sub.add_parser("distill", help="distill a built-in teacher from a YAML config (see configs/)")
    t.add_argument("config", type=Path, nargs="?", help="YAML file of DistillConfig fields")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field (repeatable)")
    t.add_argument("--resume", default=None, help="'latest' (newest good checkpoint in output_dir) or a checkpoint folder")
    t.set_defaults(func=_cmd_distill)
    p = sub.add_parser("pretrain", help="train a built-in teacher by flow matching")
    p.add_argument("--model", default="digits", help="'digits' or a 2-D toy name (checkerboard, moons, ...)")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fm-ratio", type=float, default=1.0, help="fraction with the plain FM target; < 1 folds SCFM shortcut targets into pretraining")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_cmd_pretrain)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
