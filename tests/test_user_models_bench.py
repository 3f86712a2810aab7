"""bench/user_models.py --quick (tiny teachers, the 6 settings at a few steps, 2 seeds): well-formed rows."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
STEPS = ("1", "2", "4", "8")


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SCFM_USER_MODELS_CACHE": str(tmp_path_factory.mktemp("teachers"))}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench/user_models.py"), "--quick"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_measured_readme_config_is_the_readme_example():
    import scfm
    import user_models

    config = user_models.readme_config()
    assert isinstance(config, scfm.DistillConfig)
    block = user_models.readme_block()
    assert f"max_steps={config.max_steps}," in block and f"rank={config.lora.rank}," in block


def test_teachers_are_scored_at_every_step_count(result):
    assert set(result["teachers"]) == {"digits-resmlp", "checkerboard-mlp"}
    for teacher in result["teachers"].values():
        assert teacher["metric"] in ("FD", "SWD") and teacher["eval_seed"] == result["eval_seed"]
        assert sorted(map(int, teacher["euler"])) == [1, 2, 4, 8, 32]
        assert all(math.isfinite(v) and v >= 0 for v in teacher["euler"].values())


def test_rows_are_finite_and_the_bars_follow_from_the_numbers(result):
    rows = result["rows"]
    assert len(rows) == 2 * len(result["settings"]) * 2  # teachers x settings x (no table, calibrated)
    for row in rows:
        assert row["variant"] in ("no table", "calibrated")
        for n in STEPS:
            assert len(row["per_seed"][n]) == len(result["seeds"]) == 2
            assert all(math.isfinite(v) and v >= 0 for v in row["per_seed"][n])
        t32 = result["teachers"][row["task"]]["euler"]["32"]
        assert row["ratio4"] == pytest.approx(row["mean"]["4"] / t32)
        assert row["ratio_ok"] == (row["ratio4"] <= result["bar"])
        assert row["eight_ok"] == (row["mean"]["8"] <= row["mean"]["4"])
    for run in result["runs"]:  # every run calibrated: a table for each calibration step count
        assert sorted(map(int, run["table"])) == [1, 2, 3, 4, 8]


def test_markdown_names_both_teachers_and_the_readme_verdict(result):
    text = result["markdown"]
    assert "Students on **digits-resmlp**" in text and "Students on **checkerboard-mlp**" in text
    assert "- README as written, no table (how the example samples: calibrate=False):" in text  # as the README says
    assert "- README as written, calibrated:" in text
    assert "nan" not in text
