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
    cfg = PretrainConfig(steps=args.steps, lr=args.lr)
    start = time.perf_counter()
    ema = pretrain_flow_matching(model, batches, cfg, gen)
    meta = {"command": " ".join(["scfm", *sys.argv[1:]]), "seconds": f"{time.perf_counter() - start:.0f}"}
    path = save_builtin(ema, args.out, extra=meta)
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scfm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pretrain", help="train a built-in teacher by flow matching")
    p.add_argument("--model", default="digits", help="'digits' or a 2-D toy name (checkerboard, moons, ...)")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_cmd_pretrain)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
