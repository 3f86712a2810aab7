"""The training-free baselines at their best grid shift: Euler, Heun and DPM-Solver++(2M) on the digits teacher.

    python bench/solver_shift.py      # ~5 min on one thread; sampling only

"The student beats the teacher's solvers" should be against their best settings. For each solver and step
count, the shift of the sampling grid (t -> s t / (1 + (s - 1) t), s = 1: the uniform grid) is chosen by FD
to the 360 held-out digits on tuning noise (seed 4321, 1000 samples), then scored on eval noise seed 2025
against the training digits, the noise and reference of the student's numbers in "Step scale and a fair
test of self-distillation" (which this table quotes).
"""

from __future__ import annotations

import json
from pathlib import Path

from report import machine, write_json, write_section

SOLVERS = ("euler", "heun", "dpmpp2m")
STEPS = (1, 2, 3, 4, 8)
SHIFTS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.75, 1.0, 1.5, 2.0, 3.0)
TUNE_SEED, EVAL_SEED = 4321, 2025
STUDENT_RESULTS = Path(__file__).resolve().parent / "results" / "self_targets.json"


def student_rows() -> dict[str, list[float]] | None:
    """The step-scale preset's FD means on eval seed 2025 (bench/self_targets.py), if measured."""
    if not STUDENT_RESULTS.is_file():
        return None
    data = json.loads(STUDENT_RESULTS.read_text())
    group = next((v for k, v in data.get("runs", {}).items() if k.startswith("step scale (the preset), EMA")), None)
    if not group:
        return None
    mean = lambda key: [sum(r[key][i] for r in group) / len(group) for i in range(len(STEPS))]  # noqa: E731
    return {"trained strength (no table)": mean("fd"), "calibrated": mean("fd_calibrated")}


def main() -> None:
    import torch

    from scfm import solver_nfe
    from scfm.eval.harness import DigitsEvalSet, score_row
    from scfm.eval.metrics import DigitsEvaluator
    from scfm.models.builtin import load_shipped_teacher

    torch.set_num_threads(1)
    teacher = load_shipped_teacher("digits")
    tune_eval, score_eval = DigitsEvaluator(reference="heldout"), DigitsEvaluator()
    tune_set, eval_set = DigitsEvalSet.make(1000, seed=TUNE_SEED), DigitsEvalSet.make(1000, seed=EVAL_SEED)
    rows = []
    for solver in SOLVERS:
        for n in STEPS:
            with torch.no_grad():
                tried = {s: score_row(teacher, "", solver, n, tune_set, tune_eval, shift=s)["fd"] for s in SHIFTS}
                best = min(tried, key=lambda s: (tried[s], s != 1.0))  # ties (1 step) keep the uniform grid
                at1 = score_row(teacher, "", solver, n, eval_set, score_eval, shift=1.0)["fd"]
                tuned = (
                    at1 if best == 1.0 else score_row(teacher, "", solver, n, eval_set, score_eval, shift=best)["fd"]
                )
            rows.append(
                {
                    "solver": solver,
                    "steps": n,
                    "nfe": solver_nfe(solver, n),
                    "tuning_fd": tried,
                    "best_shift": best,
                    "fd_shift1": at1,
                    "fd_tuned": tuned,
                }
            )
            print(f"{solver} {n} steps: tuning {tried} -> shift {best}: FD {at1:.2f} -> {tuned:.2f}", flush=True)
    students = student_rows()
    lines = [
        "## The teacher's solvers at their best shift (`bench/solver_shift.py`)",
        "",
        f"Machine: {machine()}. The shipped digits teacher, sampling only. Shift chosen per solver and step count from "
        f"{SHIFTS} by FD to the held-out digits on tuning noise (seed {TUNE_SEED}); scored on eval noise seed "
        f"{EVAL_SEED} against the training digits (1000 samples). Cells: FD at shift 1 -> FD at the chosen shift "
        "(shift). NFE: Euler n, Heun 2n - 1, DPM-Solver++(2M) n.",
        "",
        "| solver | " + " | ".join(f"{n} step{'s' * (n > 1)}" for n in STEPS) + " |",
        "|---|" + "---|" * len(STEPS),
    ]
    for solver in SOLVERS:
        cells = [r for r in rows if r["solver"] == solver]
        lines.append(
            f"| teacher {solver} | "
            + " | ".join(f"{r['fd_shift1']:.2f} -> {r['fd_tuned']:.2f} ({r['best_shift']:g})" for r in cells)
            + " |"
        )
    if students:
        for name, fds in students.items():
            lines.append(
                f"| SCFM student (the preset, 3 seeds), Euler, {name} | " + " | ".join(f"{v:.2f}" for v in fds) + " |"
            )
    text = "\n".join(lines)
    print(text)
    write_section("solver-shift", text)
    write_json("solver_shift", {"machine": machine(), "rows": rows, "students": students})


if __name__ == "__main__":
    main()
