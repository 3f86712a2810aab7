"""The project's quality bars for `scfm demo`, checked on its metrics.json.

    python bench/demo_checks.py out/demo/metrics.json

Prints one line per bar (value, bound, pass) and exits 1 if any bar is missed. The bars are
the ones the project set for the digits demo (issue history, BENCHMARKS.md); the shipped
command itself only measures and reports.
"""

from __future__ import annotations

import argparse
import json
import sys

STEP_COUNTS = (1, 2, 3, 4, 8)
TEACHER_REFERENCE_STEPS = 32


def _find(rows: list[dict], model: str, solver: str, steps: int) -> dict:
    return next(r for r in rows if r["model"] == model and r["solver"] == solver and r["steps"] == steps)


def acceptance_checks(rows: list[dict]) -> list[dict]:
    """The issue's quality bars, evaluated on the measured rows."""
    ref = _find(rows, "teacher", "euler", TEACHER_REFERENCE_STEPS)["fd"]
    s = {n: _find(rows, "student", "euler", n) for n in STEP_COUNTS}
    checks = [
        ("student 4-step FD <= 1.25 x teacher 32-step FD", s[4]["fd"], 1.25 * ref),
        ("student 2-step FD <= 2 x teacher 32-step FD", s[2]["fd"], 2 * ref),
        (
            "student 1-step FD <= 0.25 x teacher 1-step Euler FD",
            s[1]["fd"],
            0.25 * _find(rows, "teacher", "euler", 1)["fd"],
        ),
    ]
    out = [{"check": name, "value": round(v, 4), "bound": round(b, 4), "pass": v <= b} for name, v, b in checks]
    for nfe in (1, 2, 3, 4):
        student = s[nfe]["fd"]
        rivals = [r for r in rows if r["model"] == "teacher" and r["solver"] in ("heun", "dpmpp2m") and r["nfe"] == nfe]
        for r in rivals:
            out.append(
                {
                    "check": f"student beats teacher {r['solver']} at NFE {nfe}",
                    "value": student,
                    "bound": r["fd"],
                    "pass": student < r["fd"],
                }
            )
    acc = min(s[n]["class_acc"] for n in STEP_COUNTS if n >= 2)
    out.append(
        {"check": "student class accuracy >= 0.97 at 2+ steps", "value": acc, "bound": 0.97, "pass": acc >= 0.97}
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics", help="metrics.json written by scfm demo")
    args = parser.parse_args()
    with open(args.metrics) as f:
        rows = json.load(f)["rows"]
    checks = acceptance_checks(rows)
    for c in checks:
        print(f"{'pass' if c['pass'] else 'MISS'}  {c['check']}: {c['value']:.4g} (bound {c['bound']:.4g})")
    return 0 if all(c["pass"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
