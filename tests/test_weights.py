"""Contracts of the LoRA, EMA and weight-switch layer."""

import pytest
import torch
from torch import nn

from scfm.weights.ema import FastSlowEMA
from scfm.weights.lora import LoraSpec, attach_lora, fuse_lora, init_lora, lora_named_parameters, lora_scale
from scfm.weights.switch import WeightSwitch


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x, t):
        return self.fc2(torch.tanh(self.fc1(x))) * t[:, None]


def lora_model(seed=0):
    torch.manual_seed(seed)
    model = attach_lora(Tiny(), LoraSpec(targets=("fc1", "fc2"), rank=2, alpha=2))
    params = [p for _, p in lora_named_parameters(model)]
    with torch.no_grad():
        for p in params:
            p.normal_()
    return model, params


def test_fresh_lora_is_a_zero_delta_so_student_starts_as_teacher():
    torch.manual_seed(0)
    base = Tiny()
    x, t = torch.randn(4, 3), torch.rand(4)
    before = base(x, t)
    model = attach_lora(base, LoraSpec(targets=("fc1", "fc2"), rank=2, alpha=2))
    assert torch.equal(model(x, t), before)


def test_only_lora_tensors_train():
    model, params = lora_model()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in lora_named_parameters(model)} and len(trainable) == 4


def test_lora_targets_matching_nothing_raise_with_module_names():
    with pytest.raises(ValueError, match=r"lora.targets=\['to_q'\].*fc1, fc2"):
        attach_lora(Tiny(), LoraSpec(targets=("to_q",)))


def test_weight_switch_restores_bit_for_bit_after_exception():
    model, params = lora_model()
    before = [p.detach().clone() for p in params]
    switch = WeightSwitch(model, params)
    with pytest.raises(RuntimeError, match="boom"):
        with switch.use([torch.zeros_like(p) for p in params]):
            assert all(torch.all(p == 0) for p in params)
            raise RuntimeError("boom")
    assert all(torch.equal(a, b) for a, b in zip(params, before))
    with pytest.raises(RuntimeError, match="boom"):
        with switch.teacher():
            raise RuntimeError("boom")
    assert all(not layer._disable_adapters for layer in switch.layers)


def test_teacher_switch_runs_the_base_weights():
    model, params = lora_model()
    x, t = torch.randn(5, 3), torch.rand(5)
    with WeightSwitch(model, params).use([torch.zeros_like(p) for p in params]):
        zero_delta = model(x, t)
    with WeightSwitch(model, params).teacher():
        assert torch.allclose(model(x, t), zero_delta)
    assert not torch.allclose(model(x, t), zero_delta)


def test_teacher_switch_keeps_lora_trainable():
    model, params = lora_model()
    with WeightSwitch(model, params).teacher():
        pass
    assert all(p.requires_grad for p in params)


def test_ema_with_decay_zero_copies_and_follows_the_formula():
    params = [torch.ones(3), torch.full((2, 2), 2.0)]
    ema = FastSlowEMA(["a", "b"], [torch.zeros(3), torch.zeros(2, 2)], fast_decay=0.0, slow_decay=0.9)
    ema.update(params)
    assert torch.equal(ema.fast[0], params[0]) and torch.equal(ema.fast[1], params[1])
    assert torch.allclose(ema.slow[0], torch.full((3,), 0.1)) and torch.allclose(ema.slow[1], torch.full((2, 2), 0.2))


def test_ema_state_dict_round_trips():
    ema = FastSlowEMA(["a"], [torch.randn(4)], 0.5, 0.9)
    ema.update([torch.randn(4)])
    other = FastSlowEMA(["a"], [torch.zeros(4)], 0.5, 0.9)
    other.load_state_dict(ema.state_dict())
    assert torch.equal(other.fast[0], ema.fast[0]) and torch.equal(other.slow[0], ema.slow[0])


def test_lora_scale_is_restored_and_fusing_keeps_the_function():
    model, params = lora_model()
    x, t = torch.randn(5, 3), torch.rand(5)
    y1 = model(x, t)
    with lora_scale(model, 1.5):
        y15 = model(x, t)
    assert torch.equal(model(x, t), y1) and not torch.allclose(y15, y1)
    fused = fuse_lora(model, 1.5)
    assert not any("lora" in n for n, _ in fused.named_parameters())
    assert torch.allclose(fused(x, t), y15, atol=1e-5)


def test_gaussian_lora_init_draws_a_with_std_one_over_rank_and_zero_b():
    model = attach_lora(torch.nn.Sequential(torch.nn.Linear(256, 256)), LoraSpec(targets=("0",), rank=16, alpha=16.0))
    init_lora(model, torch.Generator().manual_seed(0), "gaussian")
    a = next(p for n, p in lora_named_parameters(model) if ".lora_A." in n)
    b = next(p for n, p in lora_named_parameters(model) if ".lora_B." in n)
    assert abs(a.std().item() - 1 / 16) < 0.005 and abs(a.mean().item()) < 0.005 and not b.any()
    with pytest.raises(ValueError, match="lora.init='xavier' must be one of"):
        init_lora(model, torch.Generator(), "xavier")


def test_ema_started_at_zeros_moves_toward_the_params_from_zero():
    params = [torch.ones(3)]
    ema = FastSlowEMA(["w"], params, fast_decay=0.5, slow_decay=0.75, start="zeros")
    assert not ema.fast[0].any() and not ema.slow[0].any()
    ema.update(params)
    assert torch.equal(ema.fast[0], torch.full((3,), 0.5)) and torch.equal(ema.slow[0], torch.full((3,), 0.25))
