"""Quality benchmarks on the built-in digits teacher: baselines, ablations, curves, few-shot.

    python bench/quality.py baselines   # teacher solvers, SCFM and the LCM baseline vs steps
    python bench/quality.py ablations   # SCFM ablations, 3 seeds each, mean and 95% interval (all groups)
    python bench/quality.py ablation-t_skip   # one group: ablation-teacher_ratio / -EMA-fast-0.9 / -EMA-fast-0.99 /
                                              # -t_skip / -EMA-restarts
    python bench/quality.py curves      # FD at 2 / 4 steps, self loss, residual vs training step
    python bench/quality.py fewshot     # 10 training digits, 5 subsets, against full data
    python bench/quality.py toy2d       # the 2-D teacher: solvers, SCFM and LCM by sliced Wasserstein
    python bench/quality.py all

Each table is printed, written to ``bench/results/<table>.json`` (plots next to it as PNG)
and into its section of BENCHMARKS.md. Runs are cached in ``bench/results/runs.jsonl``
(see ``bench/runs.py``), so an interrupted suite resumes; ``--jobs`` runs that many
single-thread trainings side by side. FD: 1000 samples, eval noise seed 999.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable

from report import machine, write_json, write_section
from runs import RESULTS, STEPS, run_all, run_key, spec
from stats import fmt_ci, mean_ci

SEEDS = (0, 1, 2)
LCM = {"objective": "lcm", "plan.teacher_min": 16, "plan.teacher_max": 16}
"""The LCM baseline: same preset (lr, batch, rank, steps, EMA), consistency objective on a 16-step teacher grid."""


def _row_cells(values_per_seed: list[list[float]]) -> list[str]:
    if not values_per_seed:
        return ["not run"] * len(STEPS)
    return [fmt_ci([v[i] for v in values_per_seed]) for i in range(len(STEPS))]


def _table(header: str, rows: list[tuple[str, list[list[float]]]], runs_per_row: int = len(SEEDS)) -> str:
    """Markdown table, one row per label; a row with fewer runs than ``runs_per_row`` says how many."""
    lines = [f"| {header} | " + " | ".join(f"FD {n}" for n in STEPS) + " |", "|---" * (len(STEPS) + 1) + "|"]
    for label, values in rows:
        note = f" (n = {len(values)})" if 0 < len(values) < runs_per_row else ""
        lines.append(f"| {label}{note} | " + " | ".join(_row_cells(values)) + " |")
    return "\n".join(lines)


def _seeded(overrides: dict, seeds=SEEDS, **extra) -> list[dict]:
    return [spec(overrides, seed=s, **extra) for s in seeds]


def _fd(results: list[dict], key: str = "fd") -> list[list[float]]:
    return [r[key] for r in results]


# ---------------------------------------------------------------------------- baselines
def baseline_specs() -> list[dict]:
    return _seeded({}) + _seeded(LCM, solver="consistency")


def baselines(jobs: int) -> tuple[str, list[dict]]:
    from scfm.eval.harness import DigitsEvalSet, score_rows
    from scfm.eval.metrics import DigitsEvaluator
    from scfm.models.builtin import load_shipped_teacher

    evaluator, evalset = DigitsEvaluator(), DigitsEvalSet.make(1000, seed=999)
    teacher = load_shipped_teacher("digits")
    solver_rows = []
    for solver, name in (
        ("euler", "teacher Euler"),
        ("heun", "teacher Heun (NFE 2n-1)"),
        ("dpmpp2m", "teacher DPM-Solver++(2M)"),
    ):
        fds = [r["fd"] for r in score_rows(teacher, "teacher", [(solver, n) for n in STEPS], evalset, evaluator)]
        solver_rows.append((name, [fds]))
    teacher32 = score_rows(teacher, "teacher", [("euler", 32)], evalset, evaluator)[0]["fd"]
    scfm_runs = run_all(_seeded({}), jobs)
    lcm_runs = run_all(_seeded(LCM, solver="consistency"), jobs)
    rows = solver_rows + [
        ("SCFM student, Euler, LoRA scale 1", _fd(scfm_runs)),
        ("SCFM student, Euler, calibrated LoRA scale", _fd(scfm_runs, "fd_calibrated")),
        ("LCM-LoRA baseline, its multistep sampler", _fd(lcm_runs)),
        ("LCM-LoRA baseline, Euler, LoRA scale 1", _fd(lcm_runs, "fd_euler")),
        ("LCM-LoRA baseline, Euler, calibrated LoRA scale", _fd(lcm_runs, "fd_calibrated")),
    ]
    chosen = {name: [r["lora_scales"] for r in runs] for name, runs in (("SCFM", scfm_runs), ("LCM", lcm_runs))}
    seconds = [r["train_seconds"] for r in scfm_runs + lcm_runs]
    write_json(
        "baselines",
        {
            "machine": machine(),
            "steps": STEPS,
            "teacher_euler_32": teacher32,
            "seeds": SEEDS,
            "rows": [{"label": label, "fd_per_seed": values} for label, values in rows],
        },
    )
    _plot_baselines(rows, teacher32)
    text = (
        f"Teacher Euler at 32 steps: FD {teacher32:.2f}. Students: mean ± 95% t-interval over training seeds "
        f"{list(SEEDS)}; teacher rows are deterministic. Equal training compute: both students train "
        f"{scfm_runs[0]['spec']['overrides'] or 'the preset'} "
        "with the same steps, batch, LoRA and EMA; per row each spends one student forward+backward and two "
        "no-grad forwards (SCFM: teacher/EMA sub-steps; LCM: teacher Euler step + target-network EMA). "
        f"Training took {min(seconds):.0f}-{max(seconds):.0f} s per run "
        "(one thread, two runs side by side). Calibrated rows: Euler at the LoRA scale per step count chosen after "
        "training on calibration noise (seed 4321) by FD to the training digits, as `scfm demo` does; scales chosen "
        "at 1 / 2 / 3 / 4 / 8 steps, "
        "per seed: "
        + "; ".join(f"{k} {v}" for k, v in chosen.items())
        + ".\n\n"
        + _table("sampler", rows, runs_per_row=1)
        + "\n\n![FD vs steps](bench/results/baselines.png)"
    )
    return text, scfm_runs + lcm_runs


def _plot_baselines(rows, teacher32: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, values in rows:
        means = [mean_ci([v[i] for v in values])[0] for i in range(len(STEPS))]
        ax.plot(STEPS, means, marker="o", label=label)
    ax.axhline(teacher32, color="gray", ls="--", label="teacher Euler 32 steps")
    ax.set(xlabel="steps", ylabel="FD (lower is better)", yscale="log", title="digits: quality vs steps")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "baselines.png", dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------- ablations
def ablation_groups() -> list[tuple[str, list[tuple[str, dict]]]]:
    from scfm.train.presets import digits_config

    base = digits_config()
    single = (f"single EMA {base.slow_decay} (fast = slow, the preset)", {})

    def fast_slow(fast: float) -> list[tuple[str, dict]]:
        return [
            (f"fast {fast} / slow {slow}", {"fast_decay": fast, "slow_decay": slow}) for slow in (0.99, 0.999, 0.9999)
        ]

    return [
        (
            "teacher_ratio",
            [
                (f"teacher_ratio {r}" + (" (teacher only)" if r == 1.0 else ""), {"plan.teacher_ratio": r})
                for r in (0.2, 0.4, 0.6, 1.0)
            ],
        ),
        ("EMA fast 0.9", [single] + fast_slow(0.9)),
        ("EMA fast 0.99", [single] + [row for row in fast_slow(0.99) if row[1]["slow_decay"] != base.slow_decay]),
        (
            "t_skip",
            [
                ("t_skip 2", {}),
                (
                    "t_skip 4 (self grids doubled)",
                    {"plan.t_skip": 4, "plan.self_grids": tuple(2 * n for n in base.plan.self_grids)},
                ),
            ],
        ),
        ("EMA restarts", [("no restarts", {}), ("restart every 100 steps", {"ema_restart_every": 100})]),
    ]


def ablation_specs(group: str | None = None) -> list[dict]:
    return [s for name, rows in ablation_groups() if group in (None, name) for _, o in rows for s in _seeded(o)]


def ablation(group: str, jobs: int) -> tuple[str, list[dict]]:
    """One ablation group: every row over SEEDS, final weights and raw student."""
    from scfm.train.presets import digits_config

    base = digits_config()
    rows = dict(ablation_groups())[group]
    run_all(ablation_specs(group), jobs)
    measured = [(label, o, run_all(_seeded(o), jobs)) for label, o in rows]
    table_rows = [(label, _fd(r)) for label, _, r in measured] + [
        (label + " (raw student)", _fd(r, "fd_student")) for label, _, r in measured
    ]
    write_json(
        f"ablation_{group.replace(' ', '_')}",
        {
            "machine": machine(),
            "steps": STEPS,
            "seeds": SEEDS,
            "rows": [
                {"label": label, "overrides": o, "fd_per_seed": _fd(r), "fd_student_per_seed": _fd(r, "fd_student")}
                for label, o, r in measured
            ],
        },
    )
    head = (
        f"**{group}**: the digits preset with one change, training seeds {list(SEEDS)}, mean ± 95% t-interval "
        f"(n = 3, t = 4.30: the interval is wide). Preset: fast {base.fast_decay}, slow {base.slow_decay}, "
        f"teacher_ratio {base.plan.teacher_ratio}, t_skip {base.plan.t_skip}, {base.max_steps} steps; final weights "
        f"{base.final_weights}, the raw student below.\n\n"
    )
    return head + _table(group, table_rows), [r for _, _, runs in measured for r in runs]


# ---------------------------------------------------------------------------- curves
CURVE_EVERY = 25
CURVE_VARIANTS = [("SCFM preset", {}), ("teacher only (teacher_ratio 1.0)", {"plan.teacher_ratio": 1.0})]


def curve_specs() -> list[dict]:
    return [spec(o, seed=0, curve_every=CURVE_EVERY) for _, o in CURVE_VARIANTS]


def curves(jobs: int) -> tuple[str, list[dict]]:
    every = CURVE_EVERY
    by_key = {r["key"]: r for r in run_all(curve_specs(), jobs)}
    results = [
        (label, by_key[run_key(s)]) for (label, _), s in zip(CURVE_VARIANTS, curve_specs()) if run_key(s) in by_key
    ]
    _plot_curves(results)
    write_json(
        "curves",
        {
            "machine": machine(),
            "every": every,
            "runs": [{"label": label, "curve": r["curve"], "history": r["history"]} for label, r in results],
        },
    )
    lines = [
        "| run | step | FD 2 | FD 4 | self-branch loss | teacher-branch loss | consistency residual |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, r in results:
        hist = {h["step"]: h for h in r["history"]}
        for point in r["curve"]:
            if point["step"] % (4 * every) and point["step"] != r["curve"][-1]["step"]:
                continue
            h = hist.get(point["step"], {})
            lines.append(
                f"| {label} | {point['step']} | {point['fd2']:.2f} | {point['fd4']:.2f} | "
                f"{h.get('loss_self', float('nan')):.4f} | "
                f"{h.get('loss_teacher', float('nan')):.4f} | {h.get('consistency_residual', float('nan')):.4f} |"
            )
    text = (
        "Seed 0, FD of the final-weights copy every 25 steps (table: every 100).\n\n"
        + "\n".join(lines)
        + "\n\n![training curves](bench/results/curves.png)"
    )
    return text, [r for _, r in results]


def _plot_curves(results) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.5))
    for label, r in results:
        steps = [p["step"] for p in r["curve"]]
        axes[0].plot(steps, [p["fd2"] for p in r["curve"]], label=label)
        axes[1].plot(steps, [p["fd4"] for p in r["curve"]], label=label)
        hist = r["history"]
        axes[2].plot([h["step"] for h in hist], [h["loss_self"] for h in hist], label=label)
        axes[3].plot([h["step"] for h in hist], [h["consistency_residual"] for h in hist], label=label)
    for ax, title in zip(axes, ("FD at 2 steps", "FD at 4 steps", "self-branch loss", "consistency residual")):
        ax.set(title=title, xlabel="training step")
        ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "curves.png", dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------- few-shot
SUBSETS = (0, 1, 2, 3, 4)
FEWSHOT_EVAL_SEED = 2025
"""Eval noise of the few-shot table: the full-data rows are then the runs of bench/self_targets.py."""
PLAIN_FM = {"plan.fm_ratio": 1.0, "step_scale.power": 0.0}
"""A LoRA fine-tuned by plain flow matching (every row the target eps - x0; one strength, as sampled)."""


def _fewshot(overrides: dict) -> list[dict]:
    return [spec(overrides, seed=0, shots=10, subset_seed=k, eval_seed=FEWSHOT_EVAL_SEED) for k in SUBSETS]


def _full_data() -> list[dict]:  # the same specs as bench/self_targets.py's preset rows (probed, same training)
    return [spec({}, seed=s, probe_every=30, eval_seed=FEWSHOT_EVAL_SEED) for s in SEEDS]


def fewshot_specs() -> list[dict]:
    return _fewshot({}) + _fewshot(PLAIN_FM) + _full_data()


def fewshot(jobs: int) -> tuple[str, list[dict]]:
    results = run_all(fewshot_specs(), jobs)  # SCFM_BENCH_CACHED_ONLY=1: only the measured ones
    few = [r for r in results if r["spec"].get("shots") and not r["spec"]["overrides"]]
    plain = [r for r in results if r["spec"].get("shots") and r["spec"]["overrides"]]
    full = [r for r in results if not r["spec"].get("shots")]
    rows = [
        ("SCFM, full data (1437 digits), seeds 0-2, trained strength", _fd(full)),
        ("SCFM, full data, calibrated", _fd(full, "fd_calibrated")),
        ("SCFM, 10 digits, 5 random subsets, trained strength", _fd(few)),
        ("SCFM, 10 digits, calibrated", _fd(few, "fd_calibrated")),
        ("plain flow-matching LoRA, the same 10 digits, scale 1", _fd(plain)),
        ("plain flow-matching LoRA, 10 digits, calibrated", _fd(plain, "fd_calibrated")),
    ]
    write_json(
        "fewshot",
        {
            "machine": machine(),
            "steps": STEPS,
            "subsets": SUBSETS,
            "eval_seed": FEWSHOT_EVAL_SEED,
            "rows": [{"label": label, "fd_per_run": v} for label, v in rows],
        },
    )
    text = (
        "Distillation data = 10 training digits drawn at random (subset seeds 0-4, training seed 0), everything "
        "else the preset; FD against the full training set on eval noise seed "
        f"{FEWSHOT_EVAL_SEED} (the full-data rows are the 3 seeds of `bench/self_targets.py`). The baseline is a LoRA "
        "of the same rank on the same 10 digits trained by plain flow matching (`plan.fm_ratio: 1.0`, "
        "`step_scale.power: 0`: every row the target eps - x0, the same steps, batch, lr and EMA), sampled with "
        "Euler. Calibrated rows: the LoRA scale per step count chosen on calibration noise (seed 4321), as "
        "`scfm demo` does. (n = k): the run count of a row with fewer than 5 (the full-data rows have 3 seeds).\n\n"
        + _table("data", rows, runs_per_row=len(SUBSETS))
    )
    return text, results


# ---------------------------------------------------------------------------- 2-D
TOY_STEPS = (1, 2, 4, 8)


def toy2d(jobs: int) -> tuple[str, list[dict]]:
    """Sliced Wasserstein on the shipped 8-gaussians teacher: solvers, SCFM and LCM students."""
    import torch

    import scfm
    from scfm.data.batches import Toy2DBatches
    from scfm.data.toy2d import sample_toy2d
    from scfm.eval.metrics import sliced_wasserstein
    from scfm.models.builtin import load_shipped_teacher
    from scfm.train.presets import toy2d_config

    ref = sample_toy2d("8gaussians", 4000, torch.Generator().manual_seed(123))
    noise = torch.randn(4000, 2, generator=torch.Generator().manual_seed(5))

    def swd(model, steps: int, solver: str = "euler") -> float:
        out = scfm.sample(model, noise, steps=steps, solver=solver, generator=torch.Generator().manual_seed(7))
        return sliced_wasserstein(out, ref, generator=torch.Generator().manual_seed(0))

    teacher = load_shipped_teacher("toy2d:8gaussians")
    rows = [
        (f"teacher {name}", [[swd(teacher, n, solver) for n in TOY_STEPS]])
        for solver, name in (("euler", "Euler"), ("heun", "Heun (NFE 2n-1)"), ("dpmpp2m", "DPM-Solver++(2M)"))
    ]
    rows.append(("teacher Euler, 32 steps", [[swd(teacher, 32)] * len(TOY_STEPS)]))
    seconds = []
    for label, overrides, solver in (
        ("SCFM student, Euler", {}, "euler"),
        ("LCM-LoRA baseline, its sampler", LCM, "consistency"),
    ):
        per_seed = []
        for seed in SEEDS:
            config = toy2d_config(overrides, seed=seed)
            start = time.perf_counter()
            student = scfm.distill(
                load_shipped_teacher("toy2d:8gaussians"),
                Toy2DBatches("8gaussians", config.batch_size, seed=seed),
                config,
                progress=False,
            )
            seconds.append(time.perf_counter() - start)
            per_seed.append([swd(student, n, solver) for n in TOY_STEPS])
        rows.append((label, per_seed))
    write_json(
        "toy2d",
        {
            "machine": machine(),
            "steps": TOY_STEPS,
            "seeds": SEEDS,
            "rows": [{"label": lab, "swd_per_seed": v} for lab, v in rows],
        },
    )
    lines = ["| sampler | " + " | ".join(f"SWD {n}" for n in TOY_STEPS) + " |", "|---" * (len(TOY_STEPS) + 1) + "|"]
    lines += [
        f"| {lab} | " + " | ".join(fmt_ci([v[i] for v in vals], 3) for i in range(len(TOY_STEPS))) + " |"
        for lab, vals in rows
    ]
    text = (
        f"Shipped 8-gaussians MLP teacher, `toy2d_config` preset ({toy2d_config().max_steps} steps); "
        "sliced Wasserstein "
        f"distance of 4000 samples against 4000 fresh data points (teacher-32 row: the same value in every column; "
        f"data against data is about 0.07). Students: mean ± 95% interval over seeds {list(SEEDS)}; "
        f"{min(seconds):.0f}-{max(seconds):.0f} s of training each.\n\n" + "\n".join(lines)
    )
    return text, [{"key": f"toy{i}", "seconds": sec} for i, sec in enumerate(seconds)]


ABLATION_GROUPS = ("teacher_ratio", "EMA fast 0.9", "EMA fast 0.99", "t_skip", "EMA restarts")
TABLES: dict[str, tuple[Callable[[int], tuple[str, list[dict]]], str]] = {
    "baselines": (baselines, "quality-baselines"),
    **{
        f"ablation-{g.replace(' ', '-')}": (functools.partial(ablation, g), f"quality-ablation-{g.replace(' ', '-')}")
        for g in ABLATION_GROUPS
    },
    "curves": (curves, "quality-curves"),
    "fewshot": (fewshot, "quality-fewshot"),
    "toy2d": (toy2d, "quality-toy2d"),
}


def regenerate_minutes(runs: list[dict], jobs: int) -> float:
    """Wall minutes to measure ``runs`` from scratch, ``jobs`` at a time (their measured seconds;
    runs measured before whole-run seconds were recorded: training time + 10%)."""
    distinct = {r["key"]: r for r in runs}.values()
    return sum(r["seconds"] if "seconds" in r else 1.1 * r["train_seconds"] for r in distinct) / jobs / 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=[*TABLES, "ablations", "all"])
    parser.add_argument("--jobs", type=int, default=2, help="trainings side by side, one thread each")
    args = parser.parse_args()
    if args.table == "all":  # one pool over every table's runs keeps all processes busy
        run_all(baseline_specs() + curve_specs() + fewshot_specs() + ablation_specs(), args.jobs)
    names = {"all": list(TABLES), "ablations": [n for n in TABLES if n.startswith("ablation-")]}.get(
        args.table, [args.table]
    )
    for name in names:
        fn, section = TABLES[name]
        text, runs = fn(args.jobs)
        minutes = regenerate_minutes(runs, args.jobs)
        reuse = " (runs already in bench/results/runs.jsonl are reused)" if all("spec" in r for r in runs) else ""
        text += (
            f"\n\nRegenerate: `python bench/quality.py {name} --jobs {args.jobs}`: "
            f"{len({r['key'] for r in runs})} runs, "
            f"about {minutes:.0f} min from scratch on {machine()}{reuse}."
        )
        print(text, flush=True)
        write_section(section, text)


if __name__ == "__main__":
    main()
