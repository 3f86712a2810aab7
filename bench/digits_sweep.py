"""One digits distillation with config overrides, scored at 1, 2, 3, 4, 8 Euler steps.

    python bench/digits_sweep.py '{"self_grids": [2, 4, 4, 8, 16]}' --eval-seed 999

Prints one line per LoRA copy (raw student, slow EMA) with FD at each step count, from the
`scfm demo` preset plus the overrides. The eval noise seed differs from the demo's (1234),
so choices made with this script are not tuned on the demo's own samples.
"""

from __future__ import annotations

import argparse
import json
import time


import scfm
from scfm.data.batches import DigitsBatches
from scfm.eval.harness import DigitsEvalSet, score_rows
from scfm.eval.metrics import DigitsEvaluator
from scfm.models.builtin import load_shipped_teacher
from scfm.presets import digits_config

STEPS = (1, 2, 3, 4, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="?", default="{}", help="JSON object of DistillConfig fields")
    parser.add_argument("--eval-seed", type=int, default=999)
    parser.add_argument("--eval-samples", type=int, default=1000)
    args = parser.parse_args()
    overrides = json.loads(args.overrides)
    config = digits_config(**overrides)
    evaluator, evalset = DigitsEvaluator(), DigitsEvalSet.make(args.eval_samples, seed=args.eval_seed)
    start = time.perf_counter()
    result = scfm.distill(load_shipped_teacher("digits"), DigitsBatches(config.batch_size, seed=config.seed), config, progress=False)
    seconds = time.perf_counter() - start
    out = {"overrides": overrides, "train_seconds": round(seconds, 1), "steps": list(STEPS)}
    for which in ("student", "slow_ema"):
        result.use_weights(which)
        out[which] = [r["fd"] for r in score_rows(result, which, [("euler", n) for n in STEPS], evalset, evaluator)]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
