"""The public contract: distill a user's own module, sample, save, load; bad input fails early."""

import copy
import json
import os

import pytest
import torch
from torch import nn

import scfm
from scfm.fileio import atomic_save_safetensors


class UserVelocity(nn.Module):
    """A user's own flow-matching model: forward(x, t, **cond) -> v."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4 + 1 + 3, 32), nn.SiLU(), nn.Linear(32, 4))

    def forward(self, x, t, style):
        return self.net(torch.cat([x, t[:, None], style], dim=1))


def batches(n=16, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    while True:
        yield {"x0": torch.randn(n, 4, generator=gen).to(dtype), "style": torch.randn(n, 3, generator=gen)}


def tiny_config(**kw):
    values = dict(max_steps=3, lr=1e-3, lora=scfm.LoraSpec(targets=("net.0", "net.2"), rank=2, alpha=2.0))
    return scfm.DistillConfig(**{**values, **kw})


def test_distill_sample_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    base = UserVelocity()
    pristine = copy.deepcopy(base)
    result = scfm.distill(base, batches(), tiny_config(final_weights="student"), progress=False)
    noise, style = torch.randn(5, 4), torch.randn(5, 3)
    before = scfm.sample(result, noise, steps=2, style=style)
    result.save(tmp_path / "run")
    assert sorted(os.listdir(tmp_path / "run")) == [
        "ema_fast.safetensors",
        "ema_slow.safetensors",
        "lora.safetensors",
        "scfm_config.json",
        "student.safetensors",
    ]
    loaded = scfm.load(tmp_path / "run", pristine)
    assert torch.equal(scfm.sample(loaded, noise, steps=2, style=style), before)
    assert len(result.history) >= 1 and all(
        k in result.history[-1] for k in ("loss_teacher", "loss_self", "consistency_residual")
    )


def test_fused_student_matches_lora_student():
    torch.manual_seed(0)
    result = scfm.distill(UserVelocity(), batches(), tiny_config(), progress=False)
    noise, style = torch.randn(5, 4), torch.randn(5, 3)
    with_lora = scfm.sample(result, noise, steps=3, style=style, lora_scale=1.3)
    fused = result.fuse(scale=1.3)
    assert torch.allclose(scfm.sample(fused, noise, steps=3, style=style), with_lora, atol=1e-5)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("plan", scfm.PlanConfig(t_skip=3), "plan.t_skip=3 must be an even integer"),
        ("plan", scfm.PlanConfig(teacher_ratio=1.5), r"plan.teacher_ratio=1.5 must lie in \[0, 1\]"),
        ("plan", scfm.PlanConfig(teacher_ratio=-0.1), r"plan.teacher_ratio=-0.1 must lie in \[0, 1\]"),
        ("lora", scfm.LoraSpec(rank=0), "lora.rank=0 must be a positive integer"),
        ("max_steps", 0, "max_steps=0 must be a positive integer"),
        ("fast_decay", 1.0, r"fast_decay=1.0 must lie in \[0, 1\)"),
        ("final_weights", "best", "final_weights='best' must be one of"),
    ],
)
def test_bad_config_is_rejected_before_training(field, value, message):
    base = UserVelocity()
    with pytest.raises(ValueError, match=message):
        scfm.distill(base, batches(), tiny_config(**{field: value}), progress=False)
    assert not any("lora" in n for n, _ in base.named_parameters())


def test_integer_data_is_rejected_with_the_fix():
    with pytest.raises(ValueError, match=r"x0 must be a floating-point tensor, got torch.int64.*x0.float\(\)"):
        scfm.distill(UserVelocity(), batches(dtype=torch.int64), tiny_config(), progress=False)


def test_wrong_data_shape_is_rejected_naming_the_shape():
    bad = iter([{"x0": torch.randn(8, 5), "style": torch.randn(8, 3)}])
    with pytest.raises(ValueError, match=r"x0 shape \(8, 5\)"):
        scfm.distill(UserVelocity(), bad, tiny_config(), progress=False)


def test_mismatched_cond_batch_is_rejected():
    bad = iter([{"x0": torch.randn(8, 4), "style": torch.randn(7, 3)}])
    with pytest.raises(ValueError, match=r"data\['style'\] has batch size 7 but x0 has 8"):
        scfm.distill(UserVelocity(), bad, tiny_config(), progress=False)


def test_lora_targets_matching_nothing_are_rejected_with_module_names():
    with pytest.raises(ValueError, match=r"match no nn.Linear module of UserVelocity.*net.0, net.2"):
        scfm.distill(UserVelocity(), batches(), tiny_config(lora=scfm.LoraSpec(targets=("to_q",))), progress=False)


def test_zero_sampling_steps_are_rejected():
    with pytest.raises(ValueError, match="steps=0 must be a positive integer"):
        scfm.sample(UserVelocity(), torch.randn(2, 4), steps=0, style=torch.randn(2, 3))


def test_missing_and_corrupt_checkpoints_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="scfm_config.json"):
        scfm.load(tmp_path / "nothing", UserVelocity())
    torch.manual_seed(0)
    scfm.distill(UserVelocity(), batches(), tiny_config(), progress=False).save(tmp_path / "run")
    (tmp_path / "run" / "lora.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match=r"lora.safetensors.*corrupt"):
        scfm.load(tmp_path / "run", UserVelocity())


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = atomic_save_safetensors({"a": torch.ones(2)}, tmp_path / "w.safetensors")
    good = path.read_bytes()
    with pytest.raises(AttributeError):
        atomic_save_safetensors({"a": "not a tensor"}, path)
    assert path.read_bytes() == good and sorted(os.listdir(tmp_path)) == ["w.safetensors"]


# ----------------------------------------------------------------------------- the result is an nn.Module


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    return scfm.distill(UserVelocity(), batches(), tiny_config(final_weights="student"), progress=False)


def test_distilled_model_is_an_nn_module_with_eval_to_and_parameters(student):
    assert isinstance(student, nn.Module) and isinstance(student, scfm.DistilledModel)
    assert student.eval() is student and not student.training and not student.model.training
    assert student.train() is student and student.model.training
    student.eval()
    names = [n for n, _ in student.named_parameters()]
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    assert names and all(n.startswith("model.") for n in names) and all("lora_" in n for n in trainable)
    moved = copy.deepcopy(student).to(torch.float64)
    assert all(p.dtype == torch.float64 for p in moved.parameters())
    assert all(t.dtype == torch.float64 for copies in moved.weights.values() for t in copies.values())
    x, t, style = torch.randn(3, 4, dtype=torch.float64), torch.rand(3, dtype=torch.float64), torch.randn(3, 3)
    assert moved(x, t, style=style.double()).dtype == torch.float64


def test_distilled_model_state_dict_round_trip_reproduces_the_velocity(student):
    torch.manual_seed(1)
    other = scfm.distill(UserVelocity(), batches(), tiny_config(final_weights="student", seed=5), progress=False)
    x, t, style = torch.randn(6, 4), torch.rand(6), torch.randn(6, 3)
    with torch.no_grad():
        assert not torch.equal(other(x, t, style=style), student(x, t, style=style))
        missing, unexpected = other.load_state_dict(student.state_dict())
        assert (missing, unexpected) == ([], [])
        assert torch.equal(other(x, t, style=style), student(x, t, style=style))


def test_distilled_model_works_in_a_user_written_euler_loop(student):
    from scfm.objective.grids import time_grid

    noise, style = torch.randn(5, 4), torch.randn(5, 3)
    ts = time_grid(2, 1.0, dtype=torch.float64).tolist()  # [1 - 1e-5, 0.5, 0]
    x = noise.clone()
    with torch.no_grad():
        for t_now, t_next in zip(ts[:-1], ts[1:]):
            x = x + (t_next - t_now) * student(x, torch.full((5,), t_now), style=style)
    assert torch.allclose(x, scfm.sample(student, noise, steps=2, style=style, lora_scale=1.0), atol=1e-6)


def test_torch_compile_of_the_distilled_model_matches_eager(student):
    compiled = torch.compile(copy.deepcopy(student), backend="aot_eager", fullgraph=False)
    x, t, style = torch.randn(4, 4), torch.rand(4), torch.randn(4, 3)
    with torch.no_grad():
        assert torch.allclose(compiled(x, t, style=style), student(x, t, style=style), atol=1e-6)


def test_every_run_is_calibrated_on_a_held_out_batch_unless_turned_off(student, tmp_path):
    assert sorted(student.lora_scales) == [1, 2, 3, 4, 8]
    assert all(0.0 <= k <= 2.0 for k in student.lora_scales.values())
    torch.manual_seed(0)
    plain = scfm.distill(UserVelocity(), batches(), tiny_config(calibrate=False), progress=False)
    assert plain.lora_scales == {}
    torch.manual_seed(0)
    run = tmp_path / "run"
    saved = scfm.distill(UserVelocity(), batches(), tiny_config(output_dir=str(run)), progress=False)
    table = json.loads((run / "calibration.json").read_text())
    assert table["scales"] == {str(n): k for n, k in sorted(saved.lora_scales.items())}
    assert scfm.load(run, UserVelocity()).lora_scales == saved.lora_scales
