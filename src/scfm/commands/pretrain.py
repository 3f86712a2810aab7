"""``scfm pretrain``: train a built-in teacher by flow matching, or the digits feature classifier."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from scfm.commands._common import new_command

CLASSIFIER = "digits-classifier"
TEACHER_STEPS = 6000


def register(sub: Any) -> None:
    p = new_command(sub, "pretrain", help="train a built-in teacher by flow matching (or the digits FD classifier)")
    p.add_argument(
        "--model",
        default="digits",
        help=f"'digits', a 2-D toy name (checkerboard, moons, ...), or '{CLASSIFIER}' (the FD feature network)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"optimizer steps (default {TEACHER_STEPS}; {CLASSIFIER}: epochs, default 40)",
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--fm-ratio",
        type=float,
        default=1.0,
        help="fraction with the plain FM target; < 1 folds SCFM shortcut targets into pretraining",
    )
    p.add_argument("--out", type=Path, required=True, help="the .safetensors file to write")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.model == CLASSIFIER:
        return _classifier(args)
    from scfm.data.batches import digits_batches, toy2d_batches
    from scfm.models.builtin import build_builtin, save_builtin
    from scfm.train.pretrain import PretrainConfig, pretrain_flow_matching

    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)  # parameter init of the fresh model
    if args.model == "digits":
        model, batches = build_builtin("digits_dit"), digits_batches(args.batch_size, gen)
    else:
        model, batches = build_builtin("mlp2d"), toy2d_batches(args.model, args.batch_size, gen)
    cfg = PretrainConfig(steps=args.steps or TEACHER_STEPS, lr=args.lr, fm_ratio=args.fm_ratio)
    start = time.perf_counter()
    ema = pretrain_flow_matching(model, batches, cfg, gen)
    meta = {"command": " ".join(["scfm", *sys.argv[1:]]), "seconds": f"{time.perf_counter() - start:.0f}"}
    path = save_builtin(ema, args.out, extra=meta)
    print(f"wrote {path}")
    return 0


def _classifier(args: argparse.Namespace) -> int:
    from scfm.eval.features import train_digits_classifier

    epochs = {} if args.steps is None else {"epochs": args.steps}
    start = time.perf_counter()
    _, accuracy = train_digits_classifier(seed=args.seed, out_path=args.out, **epochs)
    print(f"held-out accuracy {accuracy:.4f} (seed {args.seed}, {time.perf_counter() - start:.1f} s) -> {args.out}")
    return 0
