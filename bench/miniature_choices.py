"""Measured choices on the miniature Flux (or SD3) student of ``scfm demo --model NAME``: sampling shift and
final weights.

    python bench/miniature_choices.py out/demo_flux            # a finished `scfm demo --model flux-digits` folder
    python bench/miniature_choices.py out/demo_flux --steps 2,4 --samples 1000

For every final-weights copy the run saved (raw student, fast EMA, slow EMA) it exports the LoRA in diffusers
format, loads it into a fresh copy of the shipped pipeline and samples the demo's evaluation prompts and noise
(seed 1234) at each step count, at the family's default shift and at shift 1, at LoRA scale 1 and at the scale
chosen by FD to the 360 held-out digits on calibration noise (seed 4321; the rows are scored on seed 1234
against the training digits, as in the demo). The teacher is scored at both shifts too. Prints a markdown table
(paste into BENCHMARKS.md) and writes ``choices_<shifts>.json`` into the demo folder.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def main() -> None:
    from scfm.calibration import calibrate_lora_scales
    from scfm.commands.demo_pipeline import (
        CALIBRATION_SAMPLES,
        CALIBRATION_SEED,
        digit_prompts,
        sample_pipeline_digits,
    )
    from scfm.eval.metrics import DigitsEvaluator
    from scfm.export import export_diffusers_lora
    from scfm.models.adapters import load_pipeline
    from scfm.pipelines.lora import load_lora
    from scfm.pipelines.sampling import resolve_shift
    from scfm.train.run_folder import load_run

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("demo", type=Path, help="output folder of scfm demo --model flux-digits | sd3-digits")
    parser.add_argument("--steps", default="2,4", help="step counts (default 2,4)")
    parser.add_argument("--samples", type=int, default=1000, help="evaluation samples per row")
    parser.add_argument("--shifts", default="default,1", help="sampling shifts: numbers, 'default', 'auto'")
    parser.add_argument("--weights", default="student,fast_ema,slow_ema", help="LoRA copies of the run to score")
    args = parser.parse_args()
    metrics = json.loads((args.demo / "metrics.json").read_text())
    steps = [int(s) for s in args.steps.split(",")]
    name, guidance, student_guidance = metrics["model"], metrics["teacher_guidance"], metrics["student_guidance"]
    model = metrics["config"]["teacher"].removeprefix("diffusers:")
    pipe, adapter_cls = load_pipeline(model, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    shifts = {
        name: resolve_shift(
            adapter_cls, pipe, None if name == "default" else name if name == "auto" else float(name), 8, 8
        )
        for name in args.shifts.split(",")
    }
    prompts, labels = digit_prompts(args.samples)
    cal_prompts, _ = digit_prompts(CALIBRATION_SAMPLES)
    evaluator, heldout = DigitsEvaluator(), DigitsEvaluator(reference="heldout")
    rows = []

    def score(weights: str, shift_name: str, n: int, scale: float, guide: float, kind: str) -> None:
        digits = sample_pipeline_digits(pipe, prompts, n, scale, shifts[shift_name], guide)
        s = evaluator.evaluate(digits, labels)
        row = {"weights": weights, "shift": shifts[shift_name], "steps": n, "lora_scale": scale, "kind": kind}
        rows.append({**row, "fd": round(s.fd, 4), "class_acc": round(s.class_acc, 4)})
        print(rows[-1], flush=True)

    for shift_name in shifts:
        for n in steps:
            score("teacher", shift_name, n, 0.0, guidance, "teacher")
    with tempfile.TemporaryDirectory() as tmp:
        for weights in args.weights.split(","):
            result, _ = load_run(args.demo / "run", weights)
            path = export_diffusers_lora(result, Path(tmp) / f"{weights}.safetensors")
            pipe.unload_lora_weights()
            load_lora(pipe, path)
            for shift_name, shift in shifts.items():
                cal = calibrate_lora_scales(
                    lambda n, scale, shift=shift: sample_pipeline_digits(
                        pipe, cal_prompts, n, scale, shift, student_guidance, CALIBRATION_SEED
                    ),
                    lambda digits: heldout.evaluate(digits).fd,
                    steps=steps,
                )
                for n in steps:
                    score(weights, shift_name, n, 1.0, student_guidance, "scale1")
                    score(weights, shift_name, n, cal.scales[n], student_guidance, "calibrated")
    (args.demo / f"choices_{args.shifts.replace(',', '_')}.json").write_text(
        json.dumps({"model": name, "rows": rows}, indent=1) + "\n"
    )
    print(f"\n{name}, {args.samples} samples per row, training seed {metrics['config']['seed']}:\n")
    print("| weights | shift | steps | FD at scale 1 | FD calibrated (scale) |")
    print("|---|---|---|---|---|")
    for r, nxt in zip(rows, rows[1:] + [None]):
        head = f"| {r['weights']} | {r['shift']:.3g} | {r['steps']} | {r['fd']:.3f} |"
        if r["kind"] == "teacher":
            print(head + " |")
        elif r["kind"] == "scale1":
            print(head + f" {nxt['fd']:.3f} ({nxt['lora_scale']:g}) |")


if __name__ == "__main__":
    main()
