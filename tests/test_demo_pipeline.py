"""`scfm demo --model sd3-digits | flux-digits`: the real diffusers path end to end, at toy length here
(the full runs, with the quality bars, are marked slow)."""

import json

import pytest
import torch

pytest.importorskip("diffusers")

from scfm.commands.cli import main  # noqa: E402
from scfm.commands.demo_pipeline import STEP_COUNTS, TEACHER_REFERENCE_STEPS, run_pipeline_demo  # noqa: E402
from scfm.models.miniature import DEMO_TEACHER_GUIDANCE, MINIATURE_MODELS  # noqa: E402

pytestmark = pytest.mark.diffusers

BAKED = MINIATURE_MODELS[1]  # the true-CFG miniature pipeline


@pytest.fixture(scope="module")
def baked_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "sd3"
    metrics = run_pipeline_demo(
        BAKED, out, max_steps=3, eval_samples=20, per_prompt=1, calibration_samples=20, cfg_mode="baked", progress=False
    )
    return out, metrics


def test_the_demo_writes_the_default_demos_contract_and_every_artifact(baked_demo):
    out, metrics = baked_demo
    written = json.loads((out / "metrics.json").read_text())
    assert written["rows"] == metrics["rows"] and written["lora_scales"] == metrics["lora_scales"]
    teacher = [r for r in metrics["rows"] if r["model"] == "teacher"]
    student = [r for r in metrics["rows"] if r["model"] == "student"]
    assert [r["steps"] for r in teacher] == [*STEP_COUNTS, TEACHER_REFERENCE_STEPS]
    assert [r["steps"] for r in student] == list(STEP_COUNTS)
    for row in metrics["rows"]:
        assert {"model", "solver", "steps", "nfe", "fd", "class_acc"} <= set(row)
        assert row["fd"] > 0 and 0 <= row["class_acc"] <= 1
    calibration = json.loads((out / "run" / "calibration.json").read_text())
    assert [r["lora_scale"] for r in student] == [calibration["scales"][str(n)] for n in STEP_COUNTS]
    fd_scales = [r["lora_scale"] for r in metrics["rows"] if r["model"] == "student_fd_scales"]
    assert fd_scales == [metrics["fd_lora_scales"][str(n)] for n in STEP_COUNTS]
    for name in ("fd_vs_steps.png", "training.png", "report.md", *(f"grid_steps{n}.png" for n in STEP_COUNTS)):
        assert (out / name).is_file(), name
    assert (out / "export" / "pytorch_lora_weights.safetensors").is_file()
    card = (out / "export" / "README.md").read_text()  # the export's model card carries the demo's measurements
    assert "license: apache-2.0" in card and "Measured by `scfm demo`" in card  # license: the shipped base's card
    assert "![teacher vs student](README_teacher_vs_student.png)" in card and "guidance_scale=1" in card  # baked
    assert len(list((out / "cache").glob("*.safetensors"))) >= 1


def test_baked_cfg_students_take_one_pass_a_step_and_the_teacher_two(baked_demo):
    _, metrics = baked_demo
    assert metrics["student_guidance"] == 0 and metrics["teacher_guidance"] == DEMO_TEACHER_GUIDANCE[BAKED] > 0
    for row in metrics["rows"]:
        assert row["nfe"] == row["steps"] * (2 if row["model"] == "teacher" else 1)


def test_the_exported_lora_in_a_fresh_pipeline_samples_what_scfm_samples(baked_demo):
    _, metrics = baked_demo
    assert metrics["latent_check"] and max(metrics["latent_check"].values()) <= 1e-4


def test_a_second_demo_run_reuses_the_cache_and_sets_the_old_run_aside(baked_demo, tmp_path):
    out, metrics = baked_demo
    before = (out / "run" / "lora.safetensors").read_bytes()
    again = run_pipeline_demo(
        BAKED, out, max_steps=1, eval_samples=10, per_prompt=1, calibration_samples=10, cfg_mode="baked", progress=False
    )
    assert again["cache_seconds"] < 5  # nothing left to generate
    aside = [p for p in out.iterdir() if p.name.startswith("run") and p.name != "run"]
    assert len(aside) == 1 and (aside[0] / "lora.safetensors").read_bytes() == before


def test_demo_cli_refuses_cfg_mode_for_the_digits_dit_in_one_line(capsys):
    assert main(["demo", "--cfg-mode", "baked", "--out", "unused"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cfg-mode baked" in err[0]


@pytest.mark.slow
@pytest.mark.parametrize("name,cfg_mode", [(MINIATURE_MODELS[0], None), (BAKED, "runtime"), (BAKED, "baked")])
def test_full_demo_meets_the_bars(name, cfg_mode, tmp_path):
    """The issue's bars: 4 steps <= 1.5x the teacher at 32, 2 steps <= 0.5x the teacher at 2, accuracy >= 0.95
    from 2 steps, exported LoRA == scfm sampling to 1e-4 (about 10 minutes each on 2 CPU cores)."""
    metrics = run_pipeline_demo(name, tmp_path / "demo", cfg_mode=cfg_mode, progress=False)
    fd = {(r["model"], r["steps"]): r for r in metrics["rows"]}
    assert fd["student", 4]["fd"] <= 1.5 * fd["teacher", TEACHER_REFERENCE_STEPS]["fd"]
    assert fd["student", 2]["fd"] <= 0.5 * fd["teacher", 2]["fd"]
    assert all(fd["student", n]["class_acc"] >= 0.95 for n in STEP_COUNTS if n >= 2)
    assert max(metrics["latent_check"].values()) <= 1e-4
    assert torch.get_num_threads() >= 1
