"""``scfm pretrain``: train a built-in teacher by flow matching, the digits feature classifier, or a miniature
diffusers pipeline on digits (``digits-vae``, then ``flux-digits`` / ``sd3-digits``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from scfm.commands._common import new_command

CLASSIFIER = "digits-classifier"
TEACHER_STEPS = 6000
VAE = "digits-vae"
MINIATURE_DEFAULTS = {
    VAE: {"steps": 3000, "batch_size": 128, "lr": 2e-3},
    "flux-digits": {"steps": 4000, "batch_size": 128, "lr": 2e-3},
    "sd3-digits": {"steps": 4000, "batch_size": 128, "lr": 2e-3},
}
"""Defaults of --steps / --batch-size / --lr for the miniature pipelines and their VAE."""
BUILTIN_DEFAULTS = {"batch_size": 256, "lr": 5e-4}


def register(sub: Any) -> None:
    p = new_command(sub, "pretrain", help="train a built-in teacher by flow matching (or the digits FD classifier)")
    p.add_argument(
        "--model",
        default="digits",
        help=f"'digits', a 2-D toy name (checkerboard, moons, ...), '{CLASSIFIER}' (the FD feature network), "
        f"'{VAE}' (the miniature pipelines' AutoencoderKL) or a miniature diffusers pipeline: 'flux-digits', "
        "'sd3-digits'",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"optimizer steps (default {TEACHER_STEPS}; {CLASSIFIER}: epochs, default 40; {VAE}: 3000; "
        "flux-digits / sd3-digits: 4000)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="default 256 (miniature models: 128)")
    p.add_argument("--lr", type=float, default=None, help="default 5e-4 (miniature pipelines and their VAE: 2e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--fm-ratio",
        type=float,
        default=1.0,
        help="fraction with the plain FM target; < 1 folds SCFM shortcut targets into pretraining",
    )
    p.add_argument(
        "--vae",
        type=Path,
        default=None,
        help=f"flux-digits / sd3-digits: a trained VAE folder (from --model {VAE}); default: train one first",
    )
    p.add_argument(
        "--vae-steps", type=int, default=None, help="flux-digits / sd3-digits without --vae: the VAE's steps"
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="the .safetensors file to write (miniature models and the VAE: the folder to write)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.model == CLASSIFIER:
        return _classifier(args)
    if args.model in MINIATURE_DEFAULTS:
        return _miniature(args)
    for key, value in BUILTIN_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
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


def _command_line() -> str:
    return " ".join(["scfm", *sys.argv[1:]])


def _train_vae(args: argparse.Namespace, steps: int, batch_size: int, lr: float) -> tuple[Any, dict]:
    """Train the miniature VAE, set its latent normalization; return it and its training record."""
    from scfm.data.digits import load_digits_split
    from scfm.eval.metrics import DigitsEvaluator
    from scfm.models.miniature import build_vae, digits_rgb
    from scfm.train.vae import (
        VaeTrainConfig,
        encode_posteriors,
        latent_statistics,
        reconstruct,
        set_latent_normalization,
        train_autoencoder,
    )

    gen = torch.Generator().manual_seed(args.seed)
    vae = build_vae(seed=args.seed)
    cfg = VaeTrainConfig(steps=steps, batch_size=batch_size, lr=lr)
    start, cpu_start = time.perf_counter(), time.process_time()
    train_autoencoder(vae, digits_rgb(load_digits_split("train").images), cfg, gen)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    shift, scale = latent_statistics(*encode_posteriors(vae, digits_rgb(load_digits_split("train").images)), gen)
    set_latent_normalization(vae, shift, scale)
    held = load_digits_split("heldout")
    evaluator = DigitsEvaluator()
    recon = reconstruct(vae, digits_rgb(held.images)).mean(dim=1, keepdim=True)
    scores = evaluator.evaluate(recon, held.labels)
    record = {
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
        "config": asdict(cfg),
        "shift_factor": shift,
        "scaling_factor": scale,
        "heldout_reconstruction_fd": round(scores.fd, 4),
        "heldout_reconstruction_class_acc": round(scores.class_acc, 4),
        "heldout_real_fd_floor": round(evaluator.fd_floor(), 4),
    }
    print(
        f"VAE: {seconds:.0f} s; held-out reconstructions FD {scores.fd:.3f} (real held-out {evaluator.fd_floor():.3f}),"
        f" class accuracy {scores.class_acc:.4f}; shift {shift:.4f}, scale {scale:.4f}"
    )
    return vae, record


def _miniature(args: argparse.Namespace) -> int:
    """``digits-vae``: train and save the VAE; ``flux-digits`` / ``sd3-digits``: train the transformer of that
    pipeline on the VAE's latents and save the whole pipeline folder."""
    from scfm.models.miniature import TRAINING_FILE, save_pipeline, training_parts
    from scfm.train.miniature import LatentFlowConfig, LatentTable, PromptTable, train_latent_flow

    defaults = MINIATURE_DEFAULTS[args.model]
    steps = args.steps or defaults["steps"]
    batch_size = args.batch_size or defaults["batch_size"]
    lr = args.lr or defaults["lr"]
    started = time.perf_counter()
    meta: dict[str, Any] = {"command": _command_line(), "threads": torch.get_num_threads(), "seed": args.seed}
    if args.model == VAE:
        vae, record = _train_vae(args, steps, batch_size, lr)
        vae.save_pretrained(args.out, safe_serialization=True)
        meta.update(record, seconds=round(time.perf_counter() - started, 1))
        (args.out / TRAINING_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        print(f"wrote {args.out}")
        return 0

    from diffusers import AutoencoderKL

    from scfm.data.digits import load_digits_split
    from scfm.models.miniature import digits_rgb
    from scfm.train.vae import normalized_posteriors

    if args.vae is not None:
        vae = AutoencoderKL.from_pretrained(args.vae, local_files_only=True)
        vae_file = args.vae / TRAINING_FILE
        meta["vae"] = {"folder": str(args.vae), **(json.loads(vae_file.read_text()) if vae_file.is_file() else {})}
    else:
        vae_defaults = MINIATURE_DEFAULTS[VAE]
        vae, record = _train_vae(
            args, args.vae_steps or vae_defaults["steps"], vae_defaults["batch_size"], vae_defaults["lr"]
        )
        meta["vae"] = {"trained_here": True, **record}
    train = load_digits_split("train")
    mean, std = normalized_posteriors(vae, digits_rgb(train.images))
    parts = training_parts(args.model, vae, seed=args.seed)
    cfg = LatentFlowConfig(steps=steps, batch_size=batch_size, lr=lr, time_shift=parts.time_shift)
    gen = torch.Generator().manual_seed(args.seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    with parts.attention():
        ema = train_latent_flow(
            parts.velocity,
            LatentTable(mean, std, train.labels),
            PromptTable(parts.cond, parts.labels),
            cfg,
            gen,
            extra_cond=parts.extra_cond,
        )
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    parts.velocity.load_state_dict(ema.state_dict())
    meta.update(
        transformer_seconds=round(seconds, 1),
        transformer_cpu_seconds=round(cpu_seconds, 1),
        seconds=round(time.perf_counter() - started, 1),
        config=asdict(cfg),
        text=parts.info,
        latent_std=round(float((mean + std * torch.randn(mean.shape, generator=gen)).std()), 4),
    )
    save_pipeline(parts.pipeline, args.out, meta)
    print(f"transformer: {seconds:.0f} s wall, {cpu_seconds:.0f} s CPU ({steps} steps); wrote {args.out}")
    return 0
