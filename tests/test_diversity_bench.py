"""bench/diversity.py's measurement on a briefly trained digits student: the teacher-32 reference scores
1 / 1 against itself, every value is a fraction or a positive ratio, and every sampler is scored."""

import math
import sys
from pathlib import Path

import scfm
from scfm.data.batches import DigitsBatches
from scfm.eval.harness import DigitsEvalSet
from scfm.eval.metrics import DigitsEvaluator
from scfm.models.builtin import load_shipped_teacher
from scfm.train.presets import digits_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # the bench scripts import as top level
import diversity  # noqa: E402


def test_diversity_rows_for_teacher_and_student():
    config = digits_config(max_steps=2, batch_size=16, calibrate=False)
    student = scfm.distill(load_shipped_teacher("digits"), DigitsBatches(16, seed=0), config, progress=False)
    rows = diversity.measure_diversity(student, DigitsEvalSet.make(60, seed=3), DigitsEvaluator())
    expected = {"teacher32"} | {f"{w}{n}" for n in diversity.DIVERSITY_STEPS for w in ("teacher", "student")}
    assert set(rows) == expected
    ref = rows["teacher32"]
    assert ref["precision_teacher"] == ref["recall_teacher"] == ref["spread_ratio"] == 1.0
    for row in rows.values():
        for key, value in row.items():
            assert math.isfinite(value) and value >= 0
            if key != "spread_ratio":
                assert value <= 1
    assert rows["teacher1"]["spread_ratio"] < rows["teacher8"]["spread_ratio"]  # one Euler step: mean digits
