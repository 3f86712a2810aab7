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
    savers = {r["setting"]: r for r in result["savers"]}  # on a CPU: int8 rows run, fp8 / nf4 say why not
    assert savers["int8 base + 8-bit AdamW"]["step_s"] > 0 and savers["int8 base + 8-bit AdamW"]["base_gib"] > 0
    assert all("CUDA" in savers[f"{q} base + 8-bit AdamW"]["skipped"] for q in ("fp8", "nf4"))


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


def _demo_rows(student_fd: dict[int, float]) -> list[dict]:
    teacher = {1: 90.8, 2: 18.0, 3: 7.2, 4: 4.6, 8: 2.2, 32: 1.1}
    rows = [{"model": "teacher", "solver": "euler", "steps": n, "nfe": n, "fd": fd} for n, fd in teacher.items()]
    for solver, fds in (("heun", {1: 90.8, 2: 11.7, 3: 3.4, 4: 2.0}), ("dpmpp2m", {1: 90.8, 2: 18.0, 3: 7.0, 4: 3.3})):
        nfe = {"heun": lambda n: 2 * n - 1, "dpmpp2m": lambda n: n}[solver]
        rows += [{"model": "teacher", "solver": solver, "steps": n, "nfe": nfe(n), "fd": fd} for n, fd in fds.items()]
    rows += [
        {"model": "student", "solver": "euler", "steps": n, "nfe": n, "fd": fd, "class_acc": 0.99}
        for n, fd in student_fd.items()
    ]
    return rows


@pytest.mark.parametrize(("four_step_fd", "status"), [(1.2, 0), (1.5, 1)])
def test_demo_checks_pass_and_miss_the_project_bars(tmp_path, four_step_fd, status):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"rows": _demo_rows({1: 12.0, 2: 1.9, 3: 1.7, 4: four_step_fd, 8: 1.0})}))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench/demo_checks.py"), str(path)], capture_output=True, text=True, env=ENV
    )
    assert proc.returncode == status, proc.stderr
    four = next(line for line in proc.stdout.splitlines() if "4-step" in line)
    assert four.startswith("pass" if status == 0 else "MISS") and f"{four_step_fd:.4g}" in four
