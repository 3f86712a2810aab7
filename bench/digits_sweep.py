"""One digits distillation with config overrides, scored at 1, 2, 3, 4, 8 steps.

    python bench/digits_sweep.py '{"plan.self_grids": [2, 4, 4, 8, 16]}' --eval-seed 999

Prints one JSON line with the FD of the final-weights LoRA copy and of the raw student at
each step count, from the `scfm demo` preset plus the overrides. The eval noise seed
differs from the demo's (1234), so choices made with this script are not tuned on the
demo's own samples. Not cached (see bench/quality.py for the cached, multi-seed tables).
"""

from __future__ import annotations

import argparse
import json

from runs import STEPS, measure, spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="?", default="{}", help="JSON object of DistillConfig fields (dotted names)")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--eval-seed", type=int, default=999)
    parser.add_argument("--eval-samples", type=int, default=1000)
    parser.add_argument("--solver", default="euler", help="euler, or consistency for the LCM baseline")
    args = parser.parse_args()
    run = spec(
        json.loads(args.overrides),
        seed=args.seed,
        eval_seed=args.eval_seed,
        eval_samples=args.eval_samples,
        solver=args.solver,
    )
    out = measure(run)
    print(
        json.dumps(
            {
                "overrides": run["overrides"],
                "seed": args.seed,
                "solver": args.solver,
                "steps": list(STEPS),
                "final": out["fd"],
                "student": out["fd_student"],
                "train_seconds": out["train_seconds"],
            }
        )
    )


if __name__ == "__main__":
    main()
