"""Choosing the LoRA scale per step count (the spec's sampling knob) by measurement."""

import json

import pytest
import torch

import scfm
from scfm.calibration import ScaleSearch, calibrate_lora_scales, paired_mse
from scfm.commands.demo import STEP_COUNTS, run_demo
from scfm.models.builtin import load_shipped_teacher
from test_api import UserVelocity, batches, tiny_config


def test_search_finds_the_minimum_of_a_unimodal_distance():
    best = {1: 1.3, 2: 1.0, 4: 0.7}
    calls = []

    def sampler(n, scale):
        calls.append((n, scale))
        return torch.tensor([scale - best[n]])

    cal = calibrate_lora_scales(sampler, lambda x: float(x.abs()), steps=(1, 2, 4))
    assert cal.scales == pytest.approx(best)
    assert all(cal.tried[n][cal.scales[n]] == min(cal.tried[n].values()) for n in best)
    assert len(calls) <= 3 * 6  # a local walk, not a sweep of every scale


def test_search_stays_inside_its_bounds():
    cal = calibrate_lora_scales(
        lambda n, s: torch.tensor([s]), lambda x: float(x), steps=(2,), search=ScaleSearch(lo=0.8, hi=1.2)
    )
    assert cal.scales[2] == pytest.approx(0.8)
    assert min(cal.tried[2]) >= 0.8 - 1e-9


def test_bad_search_and_step_counts_are_rejected():
    with pytest.raises(ValueError, match="lo=1.2"):
        calibrate_lora_scales(lambda n, s: torch.zeros(1), lambda x: 0.0, search=ScaleSearch(lo=1.2))
    with pytest.raises(ValueError, match="steps contains 0"):
        calibrate_lora_scales(lambda n, s: torch.zeros(1), lambda x: 0.0, steps=(0,))


def test_paired_mse_is_zero_on_the_reference_and_checks_shapes():
    ref = torch.randn(5, 3)
    assert paired_mse(ref)(ref.clone()) == 0.0
    with pytest.raises(ValueError, match="reference.shape"):
        paired_mse(ref)(torch.randn(5, 4))


def test_calibrated_scales_drive_sample_and_survive_save_and_load(tmp_path):
    torch.manual_seed(0)
    result = scfm.distill(UserVelocity(), batches(), tiny_config(final_weights="student"), progress=False)
    noise, style = torch.randn(6, 4), torch.randn(6, 3)
    result.lora_scales = {2: 1.5}
    assert torch.equal(
        scfm.sample(result, noise, steps=2, style=style),
        scfm.sample(result, noise, steps=2, lora_scale=1.5, style=style),
    )
    assert not torch.equal(
        scfm.sample(result, noise, steps=2, style=style),
        scfm.sample(result, noise, steps=2, lora_scale=1.0, style=style),
    )
    assert torch.equal(
        scfm.sample(result, noise, steps=3, style=style),
        scfm.sample(result, noise, steps=3, lora_scale=1.0, style=style),
    )
    result.save(tmp_path / "run")
    assert scfm.load(tmp_path / "run", UserVelocity()).lora_scales == {2: 1.5}


def test_demo_writes_its_contract_with_calibrated_and_unscaled_student_rows(tmp_path):
    metrics = run_demo(tmp_path / "demo", max_steps=2, eval_samples=100, progress=False)
    files = {p.name for p in (tmp_path / "demo").iterdir()}
    assert {"metrics.json", "report.md", "fd_vs_steps.png", "training.png", "lora"} <= files
    assert {f"grid_steps{n}.png" for n in STEP_COUNTS} <= files
    rows = json.loads((tmp_path / "demo" / "metrics.json").read_text())["rows"]
    assert rows == metrics["rows"]
    for model in ("student", "student_uncalibrated"):
        mine = [r for r in rows if r["model"] == model]
        assert [r["steps"] for r in mine] == list(STEP_COUNTS)
        assert all({"solver", "nfe", "fd", "class_acc", "lora_scale"} <= set(r) for r in mine)
    assert [r["lora_scale"] for r in rows if r["model"] == "student"] == [
        metrics["lora_scales"][str(n)] for n in STEP_COUNTS
    ]
    trained = [r["lora_scale"] for r in rows if r["model"] == "student_uncalibrated"]
    assert trained == [round((8 / n) ** 0.75, 4) for n in STEP_COUNTS]  # the preset's step scale, no table
    assert scfm.load(tmp_path / "demo" / "lora", load_shipped_teacher()).lora_scales == {
        n: metrics["lora_scales"][str(n)] for n in STEP_COUNTS
    }


def test_calibration_against_the_teacher_picks_scale_zero_when_the_lora_only_hurts():
    """A LoRA whose delta is pure noise is best switched off: the search walks down to scale 0."""
    from scfm.calibration import calibrate_against_teacher
    from scfm.distilled import DistilledModel
    from scfm.weights.lora import LoraSpec, attach_lora, lora_named_parameters

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))

    class Velocity(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = base

        def forward(self, x, t):
            return self.net(torch.cat([x, t[:, None]], dim=1))

    model = attach_lora(Velocity(), LoraSpec(targets=("net.0", "net.2"), rank=2, alpha=2.0))
    with torch.no_grad():
        for _, p in lora_named_parameters(model):
            p.normal_(0, 0.5)
    student = DistilledModel(model, LoraSpec(targets=("net.0", "net.2"), rank=2, alpha=2.0))
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    calibration = calibrate_against_teacher(student, noise, {}, steps=(4,), teacher_steps=4)
    assert calibration.scales[4] == 0.0 and calibration.tried[4][0.0] == 0.0
