"""Model cards of built-in and user-model runs and the family settings in card text (diffusers runs: e2e tests)."""

import math
from pathlib import Path

import pytest
import torch
import yaml

import scfm
from scfm.data.batches import digits_batches
from scfm.model_card import CARD_MARK, calibration_quality, quality_section
from scfm.models.builtin import load_shipped_teacher


def _header(path):
    text = path.read_text()
    assert text.startswith("---\n") and CARD_MARK in text
    return yaml.safe_load(text.split("---", 2)[1]), text


def _digits_run(out, **kw):
    config = scfm.DistillConfig(max_steps=2, batch_size=8, output_dir=str(out), logger="none", **kw)
    return scfm.distill(load_shipped_teacher("digits"), digits_batches(8, torch.Generator().manual_seed(0)), config)


def test_a_built_in_run_gets_a_card_whose_python_snippet_runs(tmp_path):
    student = _digits_run(tmp_path / "run", calibration_steps=(1, 4))
    header, text = _header(tmp_path / "run" / "README.md")
    assert header["library_name"] == "scfm" and "scfm" in header["tags"]
    assert "| LoRA strength |" in text and "From the run's calibration" in text
    snippet = text.split("```python\n", 1)[1].split("```", 1)[0]
    space: dict = {}
    exec(compile(snippet, "README.md snippet", "exec"), space)
    torch.manual_seed(0)
    noise = torch.randn(10, 1, 8, 8)
    want = scfm.sample(student, noise, steps=4, label=torch.arange(10))
    assert space["x0"].shape == want.shape and torch.isfinite(space["x0"]).all()
    assert space["student"].lora_scales == student.lora_scales


def test_a_run_never_replaces_a_readme_it_did_not_write(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "README.md").write_text("my notes\n")
    with pytest.warns(UserWarning, match="model card was not written.*not an scfm model card"):
        _digits_run(out, calibrate=False)
    assert (out / "README.md").read_text() == "my notes\n"


def test_a_user_models_card_says_to_load_it_onto_the_users_own_model(tmp_path):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(2, 2)

        def forward(self, x, t):
            return self.proj(x) * t[:, None]

    data = [{"x0": torch.randn(8, 2)} for _ in range(4)]
    config = scfm.DistillConfig(
        max_steps=2, batch_size=8, output_dir=str(tmp_path / "run"), logger="none", calibrate=False
    )
    scfm.distill(Net(), data, config)
    _, text = _header(tmp_path / "run" / "README.md")
    assert "a fresh Net with the pretrained weights" in text and "scfm.load(" in text


def test_calibration_table_shows_the_chosen_strength_scale_one_and_the_teacher():
    table = calibration_quality(
        {"method": "paired MSE", "scales": {"2": 1.2}, "tried": {"2": {"0": 0.5, "1": 0.2, "1.2": 0.1}}}
    )
    lines = quality_section(table)
    assert lines[2].split(" | ")[:2] == ["| model", "steps"] and "NFE" not in lines[2]  # no empty column
    assert lines[4] == "| student | 2 | 1.2 | 0.1 | 0.2 | 0.5 |"


@pytest.mark.parametrize("family", ["flux", "sd3", "wan"])
def test_comfyui_settings_give_scfms_grid_and_guidance(family):
    pytest.importorskip("diffusers")
    from scfm.models.adapters import get_adapter

    adapter_cls = get_adapter(family)
    rows = dict(adapter_cls.comfyui_settings(3.0, 3.5))
    assert rows["KSampler sampler_name"] == "euler" and rows["KSampler scheduler"] == "simple"
    if family == "flux":  # ModelSamplingFlux's shift is mu: e^mu must be the fixed shift at every resolution
        assert rows["ModelSamplingFlux max_shift"] == rows["ModelSamplingFlux base_shift"]
        assert math.isclose(math.exp(float(rows["ModelSamplingFlux base_shift"])), 3.0, rel_tol=1e-4)
        assert rows["FluxGuidance guidance"] == "3.5" and rows["KSampler cfg"] == "1"
    else:  # true CFG: ComfyUI's cfg = w + 1
        assert rows["ModelSamplingSD3 shift"] == "3" and rows["KSampler cfg"] == "4.5"


def test_known_bases_carry_their_license():
    pytest.importorskip("diffusers")
    from scfm.models.adapters import get_adapter

    assert get_adapter("flux").base_license("black-forest-labs/FLUX.1-schnell") == {"license": "apache-2.0"}
    assert get_adapter("flux").base_license("black-forest-labs/FLUX.1-dev")["license_name"].startswith("flux-1-dev")
    sd35 = get_adapter("sd3").base_license("stabilityai/stable-diffusion-3.5-large")
    assert sd35["license"] == "other" and sd35["license_name"] == "stabilityai-ai-community"
    assert get_adapter("wan").base_license("Wan-AI/Wan2.1-T2V-1.3B-Diffusers") == {"license": "apache-2.0"}
    assert get_adapter("flux").base_license("/my/own/folder") == {}


def test_a_built_in_runs_validation_grids_go_to_tensorboard_and_into_its_card(tmp_path):
    pytest.importorskip("tensorboard")
    import warnings

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from scfm.commands.cli import main

    run = tmp_path / "run"
    sets = ["max_steps=2", "batch_size=8", "validate_every=1", "logger=tensorboard", f"output_dir={run}"]
    preset = Path(__file__).resolve().parents[1] / "configs" / "digits.yaml"
    assert main(["distill", str(preset), *[a for s in sets for a in ("--set", s)]]) == 0
    assert sorted(p.name for p in (run / "validation").glob("*.png")) == ["step_00000001.png", "step_00000002.png"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
        events.Reload()
    assert [i.step for i in events.Images("validation/student")] == [1, 2]
    assert "![teacher vs student](validation/step_00000002.png)" in (run / "README.md").read_text()
