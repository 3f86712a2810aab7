"""Defaults for a user's own model: do the README example's settings carry over to other architectures?

    python bench/user_models.py            # 2 teachers x 6 settings x 3 training seeds (~70 min on 1 thread, cached)
    python bench/user_models.py --quick    # tiny sizes (the test): prints JSON, writes nothing

Two teachers of architectures the package does not ship, each trained here by plain flow matching
(x_t = (1 - t) x0 + t eps, v = eps - x0, t = 1 noise) and cached under /tmp/scfm_user_models/:

- ``digits-resmlp``: a class-conditional residual MLP on the flattened 8x8 digits (label embedding,
  sinusoidal time embedding, residual LayerNorm/SiLU blocks), scored by FD in the shipped
  classifier's features (1000 samples), as the digits DiT is;
- ``checkerboard-mlp``: the README's own ``MyVelocity`` (Linear(3, 128)-ReLU-Linear-ReLU-Linear, raw t
  input) on the 2-D checkerboard, scored by the sliced Wasserstein distance of 4000 samples to 4000
  fresh data points.

Each is distilled with ``scfm.distill`` (LoRA on every Linear layer) under six settings, 3 training
seeds each: the README example's settings before issue 15, the spec's EMAs with lr 5e-4 (the second
setting of the report in the issue), and the settings of the README example as it stands, read from
README.md, at its ``max_steps``, at 600 steps, with the paper's two EMAs (slow 0.999, which has
moved by 3000 steps) and with self targets composed by the frozen teacher instead of the EMAs. Every
run calibrates (the DistillConfig default: a LoRA scale per step count by paired MSE to the teacher
on a held-out batch); each student is scored with that table and without it (scale 1, or the trained
step scale for a ``StepScale`` run). Scores use eval noise seed 2025; the README's settings were
chosen on eval noise seed 999 with training seed 0 (the exploration table in BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

import scfm
from report import machine, write_json, write_section
from scfm.models.timestep import sinusoidal_embedding
from stats import fmt_ci, mean_ci

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("SCFM_USER_MODELS_CACHE", "/tmp/scfm_user_models"))
"""Trained teachers (safetensors) and finished runs; outside the repository."""
EVAL_SEED = 2025
"""Eval noise of the reported numbers; the README's settings were chosen on seed 999."""
TEACHER_STEPS = (1, 2, 4, 8, 32)
STUDENT_STEPS = (1, 2, 4, 8)
SEEDS = (0, 1, 2)
BAR = 1.5
"""The issue's bar: student 4-step metric <= 1.5 x the teacher's 32-step metric (and 8 steps no worse than 4)."""
VARIANTS = ("no table", "calibrated")


# ---------------------------------------------------------------------------- teachers
class ResMLPBlock(nn.Module):
    """h + fc2(SiLU(fc1(LN(h)) + cond(c))): a residual block conditioned on time and label."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.cond = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(nn.functional.silu(self.fc1(self.norm(h)) + self.cond(c)))


class DigitsResMLP(nn.Module):
    """Class-conditional residual MLP on flattened 8x8 digits: forward(x [B,1,8,8], t [B], label [B]) -> v."""

    def __init__(self, hidden: int = 256, depth: int = 4, time_dim: int = 128, classes: int = 10) -> None:
        super().__init__()
        self.time_dim = time_dim
        self.inp = nn.Linear(64, hidden)
        self.t_fc1, self.t_fc2 = nn.Linear(time_dim, hidden), nn.Linear(hidden, hidden)
        self.label_emb = nn.Embedding(classes, hidden)
        self.blocks = nn.ModuleList(ResMLPBlock(hidden) for _ in range(depth))
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, 64)

    def forward(self, x: torch.Tensor, t: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        temb = self.t_fc2(nn.functional.silu(self.t_fc1(sinusoidal_embedding(t, self.time_dim))))
        c = nn.functional.silu(temb + self.label_emb(label))
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            h = block(h, c)
        return self.out(nn.functional.silu(self.out_norm(h))).view_as(x)


DIGITS_TARGETS = ("inp", "t_fc1", "t_fc2", "fc1", "cond", "fc2", "out")


class MyVelocity(nn.Module):
    """The README's example model, unchanged: forward(x [B, 2], t [B]) -> v [B, 2]."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(3, 128), nn.Linear(128, 128), nn.Linear(128, 2)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, t[:, None]], dim=1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(h)))))


def train_flow_matching(
    model: nn.Module, data: Iterator[dict], steps: int, lr: float, seed: int, log: Callable[[str], None]
) -> nn.Module:
    """Plain flow matching with Adam and a cosine decay to lr / 20; ``data`` yields {"x0", **cond}."""
    gen = torch.Generator().manual_seed(seed + 7)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps))
    )
    model.train()
    start = time.perf_counter()
    for i in range(steps):
        batch = next(data)
        x0 = batch.pop("x0")
        eps = torch.randn(x0.shape, generator=gen)
        t = torch.rand(x0.shape[0], generator=gen)
        tb = t.view(-1, *([1] * (x0.ndim - 1)))
        loss = (model((1 - tb) * x0 + tb * eps, t, **batch) - (eps - x0)).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (i + 1) % max(1, steps // 5) == 0:
            log(f"  teacher step {i + 1}/{steps}: loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)")
    return model.eval()


def cached_teacher(
    name: str, build: Callable[[], nn.Module], train: Callable[[nn.Module], nn.Module], log: Callable[[str], None]
) -> tuple[nn.Module, float]:
    """The trained teacher from CACHE/<name>.safetensors, else trained and saved; (model, training seconds)."""
    from safetensors.torch import load_file, save_file

    path, note = CACHE / f"{name}.safetensors", CACHE / f"{name}.json"
    model = build()
    if path.is_file():
        model.load_state_dict(load_file(str(path)))
        log(f"teacher {name}: loaded {path}")
        return model.eval(), json.loads(note.read_text())["train_seconds"] if note.is_file() else math.nan
    torch.manual_seed(0)
    model = build()
    start = time.perf_counter()
    train(model)
    seconds = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    note.write_text(json.dumps({"train_seconds": round(seconds, 1)}))
    log(f"teacher {name}: trained in {seconds:.0f} s, saved {path}")
    return model.eval(), seconds


# ---------------------------------------------------------------------------- tasks
@dataclass
class Task:
    """A teacher, its data stream for distillation, its LoRA targets and its metric (lower is better)."""

    name: str
    metric: str
    teacher: nn.Module
    targets: tuple[str, ...]
    data: Callable[[int], Iterator[dict]]
    score: Callable[[nn.Module, int, float | None], float]
    teacher_seconds: float = 0.0
    notes: dict = field(default_factory=dict)


def digits_task(quick: bool, log: Callable[[str], None], eval_seed: int = EVAL_SEED) -> Task:
    from scfm.data.batches import DigitsBatches
    from scfm.eval.harness import DigitsEvalSet, score_row
    from scfm.eval.metrics import DigitsEvaluator

    hidden, depth, steps = (64, 2, 30) if quick else (256, 4, 9000)
    name = f"digits_resmlp_h{hidden}_d{depth}_s{steps}"
    teacher, seconds = cached_teacher(
        name,
        lambda: DigitsResMLP(hidden, depth),
        lambda m: train_flow_matching(m, iter(DigitsBatches(256, seed=0)), steps, 2e-3, 0, log),
        log,
    )
    evaluator = DigitsEvaluator()
    evalset = DigitsEvalSet.make(100 if quick else 1000, seed=eval_seed)

    def score(model: nn.Module, steps: int, lora_scale: float | None) -> float:
        kw = {} if lora_scale is None else {"lora_scale": lora_scale}
        with torch.no_grad():
            return score_row(model, "", "euler", steps, evalset, evaluator, **kw)["fd"]

    return Task(
        name="digits-resmlp",
        metric="FD",
        teacher=teacher,
        targets=DIGITS_TARGETS,
        data=lambda seed: iter(DigitsBatches(256 if not quick else 32, seed=1000 + seed)),
        score=score,
        teacher_seconds=seconds,
        notes={
            "hidden": hidden,
            "depth": depth,
            "teacher_steps": steps,
            "eval_samples": evalset.noise.shape[0],
            "cache": name,
            "eval_seed": eval_seed,
        },
    )


def toy_task(quick: bool, log: Callable[[str], None], eval_seed: int = EVAL_SEED, dist: str = "checkerboard") -> Task:
    from scfm.data.batches import Toy2DBatches
    from scfm.data.toy2d import sample_toy2d
    from scfm.eval.metrics import sliced_wasserstein

    steps, n_eval = (30, 256) if quick else (5000, 4000)
    name = f"{dist}_myvelocity_s{steps}"
    teacher, seconds = cached_teacher(
        name,
        MyVelocity,
        lambda m: train_flow_matching(m, iter(Toy2DBatches(dist, 512, seed=0)), steps, 2e-3, 0, log),
        log,
    )
    noise = torch.randn(n_eval, 2, generator=torch.Generator().manual_seed(eval_seed))
    ref = sample_toy2d(dist, n_eval, torch.Generator().manual_seed(123))
    other = sample_toy2d(dist, n_eval, torch.Generator().manual_seed(124))

    def swd(x: torch.Tensor) -> float:
        return sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(0))

    def score(model: nn.Module, steps: int, lora_scale: float | None) -> float:
        kw = {} if lora_scale is None else {"lora_scale": lora_scale}
        with torch.no_grad():
            return round(swd(scfm.sample(model, noise, steps=steps, **kw)), 5)

    return Task(
        name=f"{dist}-mlp",
        metric="SWD",
        teacher=teacher,
        targets=("fc1", "fc2", "fc3"),
        data=lambda seed: iter(Toy2DBatches(dist, 512 if not quick else 64, seed=1000 + seed)),
        score=score,
        teacher_seconds=seconds,
        notes={
            "teacher_steps": steps,
            "eval_samples": n_eval,
            "data_vs_data_swd": round(swd(other), 5),
            "cache": name,
            "eval_seed": eval_seed,
        },
    )


# ---------------------------------------------------------------------------- settings
def readme_block() -> str:
    """The README's first Python block: the user-model example."""
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)[0]


def readme_config() -> scfm.DistillConfig:
    """The ``config = scfm.DistillConfig(...)`` of the README's example, evaluated as written."""
    m = re.search(r"^config = (scfm\.DistillConfig\(\n.*?\n\))\n", readme_block(), flags=re.S | re.M)
    if m is None:
        raise ValueError("README example has no 'config = scfm.DistillConfig(\\n ... \\n)' block")
    return eval(m.group(1), {"scfm": scfm})  # our own README, not user input


def before_config(lr: float, fast: float, slow: float) -> scfm.DistillConfig:
    """The README example's settings before issue 15 (600 steps, rank 16, raw student), EMAs and lr varied."""
    return scfm.DistillConfig(
        max_steps=600,
        lr=lr,
        lora=scfm.LoraSpec(targets=("fc1",), rank=16, alpha=16.0),
        plan=scfm.PlanConfig(shift_range=(1.0, 1.0), resolution_shift_prob=0.0),
        fast_decay=fast,
        slow_decay=slow,
        final_weights="student",
    )


def settings(quick: bool) -> dict[str, scfm.DistillConfig]:
    """Setting name -> config (LoRA targets and seed are set per teacher and run)."""
    readme = readme_config()
    out = {
        "README before issue 15 (lr 1e-3, EMAs 0.9 / 0.99, rank 16, 600 steps)": before_config(1e-3, 0.9, 0.99),
        "spec EMAs (lr 5e-4, EMAs 0.99 / 0.999, rank 16, 600 steps)": before_config(5e-4, 0.99, 0.999),
        f"README as written ({readme.max_steps} steps)": readme,
        "README settings at 600 steps": dataclasses.replace(readme, max_steps=600),
        "README settings, two EMAs (slow 0.999)": dataclasses.replace(readme, slow_decay=0.999),
        "README settings, teacher-composed self targets": dataclasses.replace(readme, self_targets="teacher"),
    }
    if quick:
        out = {name: dataclasses.replace(c, max_steps=6 + 2 * i) for i, (name, c) in enumerate(out.items())}
    return out


README_NAME = "README as written"


def describe(config: scfm.DistillConfig) -> str:
    """The fields a setting sets, as a reader would type them."""
    c, d = config, scfm.DistillConfig()
    parts = [f"max_steps={c.max_steps}", f"lr={c.lr:g}"]
    if c.lr_schedule != d.lr_schedule:
        parts.append(f"warmup_steps={c.warmup_steps}, lr_schedule={c.lr_schedule!r}")
    if c.grad_clip != d.grad_clip:
        parts.append(f"grad_clip={c.grad_clip:g}")
    parts.append(f"rank {c.lora.rank}")
    if c.plan.teacher_ratio != d.plan.teacher_ratio or c.plan.self_grids != d.plan.self_grids:
        parts.append(f"teacher_ratio={c.plan.teacher_ratio:g}, self_grids={tuple(c.plan.self_grids)}")
    if c.self_targets != d.self_targets:
        parts.append(f"self_targets={c.self_targets!r}")
    if c.step_scale.power:
        parts.append(f"StepScale(power={c.step_scale.power:g}, ref_steps={c.step_scale.ref_steps:g})")
    parts.append(f"EMAs {c.fast_decay:g} / {c.slow_decay:g}, final_weights={c.final_weights!r}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------- runs
def for_run(config: scfm.DistillConfig, task: Task, seed: int) -> scfm.DistillConfig:
    lora = dataclasses.replace(config.lora, targets=task.targets)
    return dataclasses.replace(config, lora=lora, seed=seed, calibrate=True, log_every=max(1, config.max_steps // 5))


def distill_run(task: Task, config: scfm.DistillConfig, log: Callable[[str], None]) -> dict:
    """Train one student; score it at 1 / 2 / 4 / 8 Euler steps with and without its calibrated table."""
    start = time.perf_counter()
    student = scfm.distill(copy.deepcopy(task.teacher), task.data(config.seed), config, progress=False)
    seconds = time.perf_counter() - start
    table = dict(student.lora_scales)
    scores = {"calibrated": [task.score(student, n, None) for n in STUDENT_STEPS]}
    student.lora_scales = {}
    scores["no table"] = [task.score(student, n, None) for n in STUDENT_STEPS]
    return {
        "train_seconds": round(seconds, 2),
        "seconds": round(time.perf_counter() - start, 2),
        "scores": scores,
        "table": {str(k): v for k, v in table.items()},
    }


def cached_run(task: Task, config: scfm.DistillConfig, quick: bool, log: Callable[[str], None]) -> dict:
    """:func:`distill_run`, memoised in CACHE/runs-v2.jsonl by everything the result depends on."""
    key = json.dumps(
        {
            "task": task.name,
            "teacher": task.notes["cache"],
            "config": config.to_dict(),
            "eval": task.notes["eval_seed"],
            "q": quick,
        },
        sort_keys=True,
        default=str,
    )
    path = CACHE / "runs-v2.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record["key"] == key:
                return record["result"]
    result = distill_run(task, config, log)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps({"key": key, "result": result}) + "\n")
    log(f"  {task.name} | seed {config.seed} | {describe(config)}: {result['train_seconds']:.0f} s; {result['scores']}")
    return result


def run_readme(code: str) -> dict:
    """Run README code in a fresh process (1 thread) in a temporary folder; its wall time and stdout."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            capture_output=True,
            text=True,
            timeout=900,
        )
    return {
        "seconds": round(time.perf_counter() - start, 1),
        "returncode": proc.returncode,
        "stdout": proc.stdout.strip(),
    }


# ---------------------------------------------------------------------------- report
def summarize(task: Task, teacher: dict[int, float], name: str, results: list[dict]) -> list[dict]:
    """One row per variant (no table / calibrated): per-seed scores, means, the 4-step ratio and both bars."""
    rows = []
    for variant in VARIANTS:
        cols = {n: [r["scores"][variant][i] for r in results] for i, n in enumerate(STUDENT_STEPS)}
        m4, m8 = mean_ci(cols[4])[0], mean_ci(cols[8])[0]
        rows.append(
            {
                "task": task.name,
                "setting": name,
                "variant": variant,
                "per_seed": {str(n): cols[n] for n in STUDENT_STEPS},
                "mean": {str(n): mean_ci(cols[n])[0] for n in STUDENT_STEPS},
                "ci95": {str(n): mean_ci(cols[n])[1] for n in STUDENT_STEPS},
                "ratio4": m4 / teacher[32],
                "ratio4_ci95": mean_ci([v / teacher[32] for v in cols[4]])[1],
                "ratio_ok": m4 / teacher[32] <= BAR,
                "eight_ok": m8 <= m4,
                "train_seconds": sum(r["train_seconds"] for r in results) / max(1, len(results)),
            }
        )
    return rows


def teacher_lines(tasks: list[Task]) -> list[str]:
    out = []
    for t in tasks:
        n = t.notes
        if t.metric == "FD":
            out.append(
                f"- **{t.name}**: a class-conditional residual MLP on flattened 8x8 digits (hidden {n['hidden']}, "
                f"{n['depth']} residual LayerNorm/SiLU blocks conditioned on a sinusoidal time embedding plus a label "
                f"embedding; {n['teacher_steps']} Adam steps, batch 256, lr 2e-3 cosine). Metric: FD in the shipped "
                f"classifier's features, {n['eval_samples']} samples ({n['eval_samples'] // 10} per class). "
                "Distilled on batches of 256 training digits, LoRA on all its Linear layers."
            )
        else:
            out.append(
                f"- **{t.name}**: the README's own `MyVelocity` (Linear(3, 128)-ReLU-Linear(128, 128)-ReLU-"
                f"Linear(128, 2), t fed raw) on the 2-D checkerboard of `scfm.data.toy2d` ({n['teacher_steps']} Adam "
                f"steps, batch 512, lr 2e-3 cosine). Metric: sliced Wasserstein distance (256 projections; a distance, "
                f"not a squared one like FD) of {n['eval_samples']} samples to {n['eval_samples']} fresh checkerboard "
                f"points; fresh data against them scores {n['data_vs_data_swd']:.3f}. Distilled on batches of 512, "
                "LoRA on fc1, fc2, fc3."
            )
    return out


def markdown(tasks: list[Task], teachers: dict, rows: list[dict], configs: dict, info: dict) -> str:
    dig = {t.name: 2 if t.metric == "FD" else 3 for t in tasks}
    out = [
        "## Defaults for a user's own model: other architectures (`bench/user_models.py`)",
        "",
        "Do the `DistillConfig` settings of the README's user-model example carry over to teachers of other "
        "architectures than the shipped DiT? Two teachers the package does not ship, trained by plain flow matching "
        "in the script:",
        "",
        *teacher_lines(tasks),
        "",
        "Settings:",
        "",
        *[f"- {name}: {describe(c)}" for name, c in configs.items()],
        "",
        " ".join(
            [
                "Every run: unshifted grids, all else at its default, and the default calibration (a LoRA scale per",
                "step count by paired MSE to the teacher's 32-step samples on a held-out batch). *no table*: sampled",
                "at LoRA scale 1, or at the trained strength `(ref_steps / n) ** power` for a `StepScale` run (what",
                "`scfm.sample` does without a table); *calibrated*: with the run's table (what `scfm.sample` does",
                f"after the run). Eval noise seed {EVAL_SEED}; the README's settings were chosen on seed 999 with",
                f"training seed 0 (table above). Training seeds {info['seeds']}: mean ± 95% t interval.",
                f"Machine: {machine()}; one process. This invocation {info['wall_minutes']:.0f} min; from scratch",
                f"about {info['scratch_minutes']:.0f} min (teachers and runs are cached in `{CACHE}`).",
            ]
        ),
        "",
        "Teachers, Euler:",
        "",
        "| teacher | " + " | ".join(f"{n} step{'s' * (n > 1)}" for n in TEACHER_STEPS) + " |",
        "|---" + "|---:" * len(TEACHER_STEPS) + "|",
    ]
    for t in tasks:
        d = dig[t.name]
        out.append(
            f"| {t.name} ({t.metric}) | " + " | ".join(f"{teachers[t.name][n]:.{d}f}" for n in TEACHER_STEPS) + " |"
        )
    for t in tasks:
        d = dig[t.name]
        out += [
            "",
            f"Students on **{t.name}** ({t.metric}, teacher 32 steps {teachers[t.name][32]:.{d}f}; ratio = mean 4-step "
            f"/ teacher 32-step, ± the interval of the per-seed ratios; bars: ratio <= {BAR}, mean 8-step <= mean "
            "4-step):",
            "",
            "| setting | sampled | "
            + " | ".join(f"{n} step{'s' * (n > 1)}" for n in STUDENT_STEPS)
            + f" | ratio 4 / T32 | <= {BAR} | 8 <= 4 | train s |",
            "|---|---" + "|---:" * len(STUDENT_STEPS) + "|---:|:---:|:---:|---:|",
        ]
        for row in (r for r in rows if r["task"] == t.name):
            out.append(
                f"| {row['setting']} | {row['variant']} | "
                + " | ".join(fmt_ci(row["per_seed"][str(n)], d) for n in STUDENT_STEPS)
                + f" | {row['ratio4']:.2f} ± {row['ratio4_ci95']:.2f} | {'yes' if row['ratio_ok'] else 'no'} "
                f"| {'yes' if row['eight_ok'] else 'no'} | {row['train_seconds']:.0f} |"
            )
    out.append("")
    readme = next(c for name, c in configs.items() if name.startswith(README_NAME))
    used = "calibrated" if readme.calibrate else "no table"
    tag = f" (how the example samples: calibrate={readme.calibrate})"
    for variant in VARIANTS:
        per = [r for r in rows if r["setting"].startswith(README_NAME) and r["variant"] == variant]
        verdict = "meets both bars on every teacher" if all(r["ratio_ok"] and r["eight_ok"] for r in per) else "FAILS"
        out.append(
            f"- README as written, {variant}{tag if variant == used else ''}: "
            + "; ".join(
                f"{r['task']} 4-step {fmt_ci(r['per_seed']['4'], dig[r['task']])} (ratio {r['ratio4']:.2f}), "
                f"8-step {fmt_ci(r['per_seed']['8'], dig[r['task']])}"
                for r in per
            )
            + f": {verdict}."
        )
    res = info.get("readme")
    if res:
        printed = res["stdout"].splitlines()[-1] if res["stdout"] else f"(no output; exit code {res['returncode']})"
        out.append(
            f"- The README example itself (4 blobs, 1 thread, beside the other runs): {res['seconds']:.0f} s, "
            f"printed `{printed}`."
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny teachers and runs (tests); prints JSON, writes nothing"
    )
    parser.add_argument("--seeds", type=int, default=len(SEEDS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    wall = time.perf_counter()
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if args.quick else (lambda s: print(s, flush=True))
    tasks = [digits_task(args.quick, log), toy_task(args.quick, log)]
    configs = settings(args.quick)
    seeds = SEEDS[: 2 if args.quick else args.seeds]
    teachers = {t.name: {n: t.score(t.teacher, n, None) for n in TEACHER_STEPS} for t in tasks}
    for t in tasks:
        log(f"teacher {t.name} {t.metric} at {TEACHER_STEPS} steps: {teachers[t.name]}")
    rows, runs = [], []
    for t in tasks:
        for name, config in configs.items():
            results = [cached_run(t, for_run(config, t, s), args.quick, log) for s in seeds]
            runs += [{"task": t.name, "setting": name, "seed": s, **r} for s, r in zip(seeds, results)]
            rows += summarize(t, teachers[t.name], name, results)
        log(f"{t.name} done at {(time.perf_counter() - wall) / 60:.1f} min")
    readme = None if args.quick else run_readme(readme_block())
    scratch = (sum(t.teacher_seconds for t in tasks) + sum(r["seconds"] for r in runs)) / 60
    info = {
        "seeds": list(seeds),
        "wall_minutes": (time.perf_counter() - wall) / 60,
        "scratch_minutes": scratch,
        "readme": readme,
    }
    payload = {
        "machine": machine(),
        "seeds": list(seeds),
        "bar": BAR,
        "eval_seed": EVAL_SEED,
        "teachers": {t.name: {"metric": t.metric, "euler": teachers[t.name], **t.notes} for t in tasks},
        "settings": {name: describe(c) for name, c in configs.items()},
        "rows": rows,
        "runs": runs,
        "readme_example": readme,
    }
    text = markdown(tasks, teachers, rows, configs, info)
    if args.quick:
        print(json.dumps({**payload, "markdown": text}))
        return
    print(text)
    write_section("user-models", text)
    write_json("user_models", payload)


if __name__ == "__main__":
    main()
