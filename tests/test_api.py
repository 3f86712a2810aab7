"""The public contract: distill a user's own module, sample, save, load; bad input fails early."""

import copy
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
    values = dict(max_steps=3, lr=1e-3, lora_rank=2, lora_alpha=2, lora_targets=("net.0", "net.2"))
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
        ("t_skip", 3, "t_skip=3 must be an even integer"),
        ("teacher_ratio", 1.5, r"teacher_ratio=1.5 must lie in \[0, 1\]"),
        ("teacher_ratio", -0.1, r"teacher_ratio=-0.1 must lie in \[0, 1\]"),
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
        scfm.distill(UserVelocity(), batches(), tiny_config(lora_targets=("to_q",)), progress=False)


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
    with pytest.raises(Exception):
        atomic_save_safetensors({"a": "not a tensor"}, path)
    assert path.read_bytes() == good and sorted(os.listdir(tmp_path)) == ["w.safetensors"]
