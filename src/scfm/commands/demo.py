"""`scfm demo`: distill the shipped digits teacher and measure it against training-free solvers.

Writes into ``out``: ``metrics.json`` (rows per DESIGN.md), ``grid_steps{n}.png`` (teacher vs
student samples per step count), ``fd_vs_steps.png``, ``lora/`` (the LoRA as safetensors),
``training.png`` (loss components and consistency residual) and ``report.md``.

The student is sampled with plain Euler at a LoRA scale per step count (the spec's sampling
knob), chosen after training by :func:`scfm.calibration.calibrate_lora_scales` on
calibration noise (seed ``CALIBRATION_SEED``) by FD to the 360 held-out digits: never on the
evaluation noise, never against the training-digit statistics the rows are scored on. The rows
of the same LoRA without any table are reported too (model ``student_uncalibrated``: each step
count at the LoRA scale the run trained it at, ``(8 / n) ** 0.75`` for the preset's step scale).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Any

import torch

from scfm.calibration import ScaleCalibration, calibrate_lora_scales
from scfm.commands._common import new_command, stage
from scfm.data.batches import digits_batches
from scfm.eval.harness import DigitsEvalSet, sample_digits, score_rows
from scfm.eval.metrics import DigitsEvaluator
from scfm.eval.plots import plot_quality_vs_steps, plot_training, save_comparison_grid
from scfm.fileio import atomic_write_json, atomic_write_text
from scfm.models.builtin import load_shipped_teacher
from scfm.models.miniature import MINIATURE_MODELS
from scfm.train.loop import distill
from scfm.train.presets import digits_config
from scfm.weights.lora import lora_named_parameters
from scfm.weights.switch import WeightSwitch

STEP_COUNTS = (1, 2, 3, 4, 8)
TEACHER_REFERENCE_STEPS = 32
CALIBRATION_SEED = 4321
"""Noise seed for choosing LoRA scales; the evaluation noise uses seed 1234."""


def teacher_plan() -> list[tuple[str, int]]:
    plan = [(solver, n) for solver in ("euler", "heun", "dpmpp2m") for n in STEP_COUNTS]
    return plan + [("euler", TEACHER_REFERENCE_STEPS)]


def student_plan() -> list[tuple[str, int]]:
    return [("euler", n) for n in STEP_COUNTS]


class _TeacherView:
    """Calls the distilled model with its LoRA off: the teacher, sharing the one base copy."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.switch = WeightSwitch(model, [p for _, p in lora_named_parameters(model)])

    def __call__(self, x, t, **cond):
        with self.switch.teacher():
            return self.model(x, t, **cond)


def calibrate_demo_scales(result, evaluator: DigitsEvaluator, samples: int, progress: bool = False) -> ScaleCalibration:
    """LoRA scale per step count minimising FD to ``evaluator``'s real digits on calibration noise
    (the demo passes the held-out digits, which it never scores against)."""
    calset = DigitsEvalSet.make(samples, seed=CALIBRATION_SEED)
    return calibrate_lora_scales(
        lambda n, scale: sample_digits(result, calset, n, lora_scale=scale),
        lambda images: evaluator.evaluate(images).fd,
        steps=STEP_COUNTS,
        progress=progress,
        base_scales={n: result.trained_scale(n) for n in STEP_COUNTS},
    )


def _scale_lines(calibration: ScaleCalibration) -> list[str]:
    lines = [
        "LoRA scale per step count, chosen on calibration noise (seed "
        f"{CALIBRATION_SEED}, not the evaluation noise) by FD to the 360 held-out digits (not the training "
        "digits the rows are scored on):",
        "",
        "| steps | scale | FD at the scales tried |",
        "|---|---|---|",
    ]
    for n, tried in calibration.tried.items():
        lines.append(
            f"| {n} | {calibration.scales[n]:g} | " + ", ".join(f"{s:g}: {d:.3f}" for s, d in tried.items()) + " |"
        )
    return lines + [""]


def _write_report(out: Path, rows: list[dict], info: dict, calibration: ScaleCalibration) -> None:
    lines = [
        "# scfm demo report",
        "",
        f"Machine: {info['machine']}. Training {info['train_seconds']:.0f} s "
        f"({info['config']['max_steps']} steps, batch {info['config']['batch_size']}), "
        f"total {info['total_seconds']:.0f} s.",
        f"FD floor (360 held-out real digits vs train): {info['fd_floor']:.3f}.",
        "",
        "| model | solver | steps | NFE | FD | class acc | LoRA scale |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['solver']} | {r['steps']} | {r['nfe']} | {r['fd']:.3f} | {r['class_acc']:.3f} | "
        f"{r.get('lora_scale', '')} |"
        for r in rows
    ]
    lines += [""] + _scale_lines(calibration)
    lines += ["", "Files: `metrics.json`, `fd_vs_steps.png`, `grid_steps{n}.png`, `training.png`, `lora/`.", ""]
    atomic_write_text(out / "report.md", "\n".join(lines))


def run_demo(
    out: str | Path, max_steps: int | None = None, eval_samples: int = 1000, seed: int = 0, progress: bool = True
) -> dict:
    """Run the whole demo; returns the ``metrics.json`` content."""
    out = Path(out)
    start = time.perf_counter()
    overrides = {"seed": seed, "calibrate": False}  # the demo calibrates by FD to held-out digits below
    if max_steps is not None:
        overrides["max_steps"] = max_steps
    config = digits_config(overrides).validate()
    out.mkdir(parents=True, exist_ok=True)
    teacher = load_shipped_teacher("digits")
    evaluator = DigitsEvaluator()
    evalset = DigitsEvalSet.make(eval_samples)
    t0 = time.perf_counter()
    result = distill(
        teacher, digits_batches(config.batch_size, torch.Generator().manual_seed(seed)), config, progress=progress
    )
    train_seconds = time.perf_counter() - t0
    teacher_view = _TeacherView(result.model)
    with stage("calibrating the LoRA scale per step count by FD to the held-out digits", progress):
        calibration = calibrate_demo_scales(result, DigitsEvaluator(reference="heldout"), eval_samples, progress)
    result.lora_scales = dict(calibration.scales)
    with stage(f"scoring teacher and student on {eval_samples} samples", progress):
        rows = score_rows(teacher_view, "teacher", teacher_plan(), evalset, evaluator)
        rows += [
            {**r, "lora_scale": result.lora_scales[r["steps"]]}  # sample() uses the calibrated scale for each n
            for r in score_rows(result, "student", student_plan(), evalset, evaluator)
        ]
        rows += [  # no table: each step count at the LoRA scale the run trained it at (step_scale)
            {**r, "lora_scale": round(result.trained_scale(r["steps"]), 4)}
            for n in STEP_COUNTS
            for r in score_rows(
                result, "student_uncalibrated", [("euler", n)], evalset, evaluator, lora_scale=result.trained_scale(n)
            )
        ]
    result.save(out / "lora")
    with stage("drawing grids and plots", progress):
        for n in STEP_COUNTS:
            pick = slice(0, evalset.noise.shape[0], max(1, evalset.noise.shape[0] // 20))
            small = DigitsEvalSet(evalset.noise[pick], evalset.labels[pick])
            save_comparison_grid(
                [
                    (f"teacher euler {n}", sample_digits(teacher_view, small, n)),
                    (f"student euler {n}", sample_digits(result, small, n)),
                ],
                out / f"grid_steps{n}.png",
            )
    floor = evaluator.fd_floor()
    plot_quality_vs_steps(rows, out / "fd_vs_steps.png", floor=floor)
    plot_training(result.history, out / "training.png")
    info = {
        "machine": (
            f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}"
        ).strip(),
        "fd_floor": floor,
        "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - start,
        "config": config.to_dict(),
        "eval_samples": int(evalset.noise.shape[0]),
    }
    metrics = {
        "rows": rows,
        "fd_floor": round(floor, 4),
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(info["total_seconds"], 1),
        "eval_samples": info["eval_samples"],
        "machine": info["machine"],
        "config": info["config"],
        "lora_scales": {str(n): v for n, v in calibration.scales.items()},
        "calibration": {
            str(n): {f"{k:g}": round(v, 4) for k, v in tried.items()} for n, tried in calibration.tried.items()
        },
        "history": result.history,
    }
    atomic_write_json(out / "metrics.json", metrics)
    _write_report(out, rows, info, calibration)
    return metrics


def register(sub: Any) -> None:
    d = new_command(sub, "demo", help="distill the shipped digits teacher and evaluate it (about 4 min on 2 CPU cores)")
    d.add_argument(
        "--model",
        choices=("digits", *MINIATURE_MODELS),
        default="digits",
        help="digits (the built-in DiT, default) or a shipped miniature diffusers pipeline: the whole real path "
        "(generate-data, distill from the cache, export, load_lora_weights, sample, score), about 10 min each",
    )
    d.add_argument(
        "--cfg-mode",
        choices=("runtime", "baked"),
        default=None,
        help="true-CFG pipelines (sd3-digits): keep CFG at sampling (runtime, default) or bake it into the LoRA",
    )
    d.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default out/demo)")
    d.add_argument("--steps", type=int, default=None, help="distillation steps (default: the digits preset's)")
    d.add_argument("--eval-samples", type=int, default=1000, help="generated digits per evaluated sampler")
    d.add_argument("--seed", type=int, default=0, help="training seed")
    d.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.model != "digits":
        from scfm.commands.demo_pipeline import run_pipeline_demo

        metrics = run_pipeline_demo(
            args.model,
            args.out,
            max_steps=args.steps,
            eval_samples=args.eval_samples,
            seed=args.seed,
            cfg_mode=args.cfg_mode,
        )
    elif args.cfg_mode is not None:
        raise ValueError(f"--cfg-mode {args.cfg_mode}: the digits DiT has no CFG; use it with --model sd3-digits")
    else:
        metrics = run_demo(args.out, max_steps=args.steps, eval_samples=args.eval_samples, seed=args.seed)
    print(f"{'model':14} {'solver':8} {'steps':>5} {'nfe':>4} {'FD':>8} {'acc':>6} {'scale':>5}")
    for r in metrics["rows"]:
        scale = f"{r['lora_scale']:5.2f}" if "lora_scale" in r else ""
        fd, acc = f"{r['fd']:8.3f}", f"{r['class_acc']:6.3f}"
        print(f"{r['model']:14} {r['solver']:8} {r['steps']:5d} {r['nfe']:4d} {fd} {acc} {scale}")
    print(
        f"FD floor {metrics['fd_floor']:.3f}; training {metrics['train_seconds']:.0f} s; "
        f"total {metrics['total_seconds']:.0f} s"
    )
    if "latent_check" in metrics:
        diffs = ", ".join(f"{n} steps {d:.1e}" for n, d in metrics["latent_check"].items())
        print(f"exported LoRA in a fresh pipeline vs scfm sampling, max abs latent difference: {diffs}")
    print(f"wrote {args.out}/metrics.json, report.md and PNGs")
    return 0
