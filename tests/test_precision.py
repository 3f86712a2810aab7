"""Mixed precision, gradient checkpointing and compile options of the engine (CPU)."""

import pytest
import torch

import scfm
from scfm.data.batches import DigitsBatches
from scfm.models.builtin import build_builtin
from scfm.train.presets import digits_config
from scfm.weights.lora import lora_named_parameters


def tiny_dit():
    torch.manual_seed(0)
    model = build_builtin("digits_dit", {"dim": 32, "depth": 2, "heads": 2, "time_dim": 32})
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model


def run(**kw):
    config = digits_config({"lora.rank": 4, "lora.alpha": 4.0}, max_steps=3, batch_size=16, log_every=1, **kw)
    return scfm.distill(tiny_dit(), DigitsBatches(16, seed=0), config, progress=False)


def test_gradient_checkpointing_gives_the_same_training():
    plain, ckpt = run(), run(gradient_checkpointing=True)
    assert [h["loss"] for h in plain.history] == pytest.approx([h["loss"] for h in ckpt.history], rel=1e-5)
    assert plain.model.gradient_checkpointing is False and ckpt.model.gradient_checkpointing is True


def test_bf16_autocast_trains_with_fp32_lora_master_weights():
    result = run(mixed_precision="bf16")
    assert all(p.dtype == torch.float32 for _, p in lora_named_parameters(result.model))
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)


def test_gradient_checkpointing_on_a_model_without_it_is_rejected():
    model = build_builtin("mlp2d")
    config = scfm.DistillConfig(max_steps=1, lora=scfm.LoraSpec(targets=("fc1",)), gradient_checkpointing=True)
    with pytest.raises(ValueError, match="gradient_checkpointing=True but VelocityMLP2D"):
        scfm.distill(model, iter([{"x0": torch.randn(4, 2)}]), config, progress=False)


@pytest.mark.slow
def test_torch_compile_trains_like_eager():
    from scfm.data.batches import Toy2DBatches
    from scfm.models.builtin import load_shipped_teacher
    from scfm.train.presets import toy2d_config

    def loss(compile_):
        cfg = toy2d_config(max_steps=10, compile=compile_, log_every=10)
        return scfm.distill(
            load_shipped_teacher("toy2d:8gaussians"), Toy2DBatches("8gaussians", 64), cfg, progress=False
        ).history[-1]["loss"]

    assert loss(True) == pytest.approx(loss(False), rel=1e-3)
