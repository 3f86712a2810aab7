"""The benchmark scripts run (tiny sizes) and print what BENCHMARKS.md quotes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.diffusers
def test_gpu_bench_runs_at_tiny_size_on_cpu():
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench/gpu.py"),
            "--tiny",
            "--json",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--repeats",
            "1",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
        check=True,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [r["batch"] for r in result["steps"]] == [1, 2] and all(
        r["scfm_s"] > 0 and r["fm_s"] > 0 for r in result["steps"]
    )
    assert {(r["steps"], r["fused"]) for r in result["sampling"]} == {(3, False), (8, False), (3, True), (8, True)}


def test_cost_bench_prints_one_json_object_with_the_ratios():
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench/cost.py"),
            "--json",
            "--batch",
            "8",
            "--steps",
            "2",
            "--warmup",
            "0",
            "--sampling-batch",
            "4",
            "--sampling-repeats",
            "1",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
        check=True,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["scfm_over_fm_step_time"] > 1.0 and result["scfm_over_fm_peak_memory"] > 0.5
    assert [r["steps"] for r in result["digits_sampling"]] == [1, 2, 4, 8]
