"""Does the student keep the teacher's variety? Precision, recall and per-class spread on the digits preset.

    python bench/diversity.py          # 3 training seeds of the `scfm demo` preset (cached in bench/results/runs.jsonl)

The paper's third open question. Each run is the `scfm demo` preset (training seeds 0-2, as in
``bench/self_targets.py``), sampled on eval noise seed 2025 (1000 digits, 100 per class) at 1 / 2 / 4 / 8
Euler steps at the strength it trained each step count at (no table). In the shipped classifier's
features (the space FD uses):

- precision / recall (Kynkäänniemi et al. 2019, k = 5) against the teacher's 32-step samples from the
  same noise and labels: precision, how much of the student lies on the teacher's manifold; recall, how
  much of the teacher's manifold the student covers (its variety);
- the same against 1000 real training digits (the teacher's own row says what the data allows);
- per-class spread: the mean RMS distance of a class's features to the class mean, as a ratio to
  the teacher-32's (1 = the same variety within each digit; below 1 = collapsed toward a mean digit).
"""

from __future__ import annotations

import argparse

from report import machine, write_json, write_section
from runs import run_all, spec
from stats import fmt_ci

EVAL_SEED = 2025
DIVERSITY_STEPS = (1, 2, 4, 8)
K = 5
REAL_SAMPLES = 1000


def measure_diversity(model, evalset, evaluator) -> dict:
    """Scores of a distilled digits model at the trained strength; model at LoRA scale 0 is the teacher."""
    import torch

    from scfm.data.digits import load_digits_split
    from scfm.eval.harness import sample_digits
    from scfm.eval.metrics import class_spread, precision_recall

    def feats(steps: int, **kw) -> torch.Tensor:
        with torch.no_grad():
            return evaluator.features(sample_digits(model, evalset, steps, **kw).clamp(-1, 1))

    real = load_digits_split("train").images[:REAL_SAMPLES]
    real_feats = evaluator.features(real)
    teacher = feats(32, lora_scale=0.0)
    teacher_spread = class_spread(teacher, evalset.labels)

    def row(f: torch.Tensor) -> dict:
        to_teacher, to_real = precision_recall(teacher, f, K), precision_recall(real_feats, f, K)
        return {
            "precision_teacher": to_teacher.precision,
            "recall_teacher": to_teacher.recall,
            "precision_real": to_real.precision,
            "recall_real": to_real.recall,
            "spread_ratio": class_spread(f, evalset.labels) / teacher_spread,
        }

    out = {"teacher32": row(teacher)}
    for n in DIVERSITY_STEPS:
        out[f"teacher{n}"] = row(feats(n, lora_scale=0.0))
        out[f"student{n}"] = row(feats(n))
    return out


COLUMNS = (
    ("precision_teacher", "precision vs T32"),
    ("recall_teacher", "recall vs T32"),
    ("precision_real", "precision vs real"),
    ("recall_real", "recall vs real"),
    ("spread_ratio", "class spread / T32"),
)


def table(rows: list[dict]) -> list[str]:
    div = [r["diversity"] for r in rows]
    lines = [
        "| sampler | " + " | ".join(title for _, title in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    names = ["teacher32"] + [f"{who}{n}" for n in DIVERSITY_STEPS for who in ("teacher", "student")]
    for name in names:
        who, n = ("teacher", name[7:]) if name.startswith("teacher") else ("student", name[7:])
        label = f"{who} Euler, {n} step{'s' * (n != '1')}" + (" (the reference)" if name == "teacher32" else "")
        lines.append(f"| {label} | " + " | ".join(fmt_ci([d[name][key] for d in div], 3) for key, _ in COLUMNS) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()
    rows = run_all([spec({}, seed=s, eval_seed=EVAL_SEED, diversity=True) for s in range(args.seeds)], jobs=args.jobs)
    text = "\n".join(
        [
            "## Diversity: does the student keep the teacher's variety? (`bench/diversity.py`)",
            "",
            f"Machine: {machine()}. The `scfm demo` preset, {len(rows)} training seeds (mean ± 95% t interval), "
            f"1000 samples (100 per class) on eval noise seed {EVAL_SEED}, students at the strength they trained each "
            f"step count at (no table). Improved precision / recall (k = {K}) in the digits classifier's features "
            f"against the teacher's 32-step samples from the same noise and labels, and against {REAL_SAMPLES} real "
            "training digits; class spread = mean RMS distance of a class's features to its mean, over the "
            "teacher-32's. The teacher rows are the same model at LoRA scale 0, so they vary with the seed only "
            "through nothing (their interval is 0).",
            "",
            *table(rows),
        ]
    )
    print(text)
    write_section("diversity", text)
    write_json("diversity", {"machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
