"""Export of a distilled Flux/SD3 LoRA to diffusers and kohya (ComfyUI) files, loaded back by diffusers."""

import logging

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers.utils import logging as diffusers_logging  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import scfm  # noqa: E402
from scfm.export import export_diffusers_lora, export_kohya_lora, kohya_name, lora_factors  # noqa: E402
from scfm.models.flux import FluxAdapter  # noqa: E402
from scfm.models.sd3 import SD3Adapter  # noqa: E402
from scfm.weights.lora import lora_named_parameters  # noqa: E402

pytestmark = pytest.mark.diffusers

from test_adapters import C, D, H, L, W, tiny_flux, tiny_sd3  # noqa: E402  (shared tiny models)

RANK, ALPHA = 2, 4.0  # alpha != rank: the scale 2 must survive the export


def cond(b, seed, flux):
    g = torch.Generator().manual_seed(seed)
    c = {"prompt_embeds": torch.randn(b, L, D, generator=g), "pooled_prompt_embeds": torch.randn(b, 16, generator=g)}
    if flux:
        c["guidance"] = 7.5 * torch.rand(b, generator=g)
    else:  # SD3 with runtime classifier-free guidance: one negative row broadcasts
        c["negative_prompt_embeds"] = torch.randn(1, L, D, generator=g).expand(b, L, D)
        c["negative_pooled_prompt_embeds"] = torch.randn(1, 16, generator=g).expand(b, 16)
    return c


def adapter_for(transformer, flux):
    return FluxAdapter(transformer) if flux else SD3Adapter(transformer, guidance_scale=3.5, cfg_mode="runtime")


def base(flux):
    return tiny_flux() if flux else tiny_sd3()


def distilled(flux):
    adapter = adapter_for(base(flux), flux)
    g = torch.Generator().manual_seed(3)
    data = [{"x0": torch.randn(2, C, H, W, generator=g), **cond(2, i, flux)} for i in range(2)]
    config = scfm.DistillConfig(
        max_steps=2,
        lr=1e-3,
        lora=scfm.LoraSpec(targets=type(adapter).default_lora_targets, rank=RANK, alpha=ALPHA),
        plan=scfm.PlanConfig(teacher_min=4, teacher_max=4),
        log_every=1,
    )
    result = scfm.distill(adapter, data, config, progress=False)
    with torch.no_grad():  # two steps barely move B: make the delta large enough to see
        for name, p in lora_named_parameters(result.model):
            if ".lora_B." in name:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return result


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def velocity(adapter, flux):
    g = torch.Generator().manual_seed(11)
    x, t = torch.randn(2, C, H, W, generator=g), torch.rand(2, generator=g)
    c = cond(2, 12, flux)
    with torch.no_grad():
        return adapter(x, t, **c)


@pytest.mark.parametrize("flux", [True, False], ids=["flux", "sd3"])
def test_diffusers_export_loads_into_a_fresh_transformer_with_the_same_output(flux, tmp_path):
    result = distilled(flux)
    path = export_diffusers_lora(result, tmp_path / "lora.safetensors")
    sd = load_file(path)
    factors = lora_factors(result)
    assert len(sd) == 2 * len(factors) and all(
        k.startswith("transformer.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in sd
    )
    assert all(scale == ALPHA / RANK for _, _, scale in factors.values())

    fresh = base(flux)
    logger = diffusers_logging.get_logger("diffusers")
    handler = Collect()
    logger.addHandler(handler)
    try:
        fresh.load_lora_adapter(str(path), prefix="transformer")
    finally:
        logger.removeHandler(handler)
    assert not [
        m
        for m in handler.messages
        if "unexpected" in m.lower() or "missing" in m.lower() or "incompatible" in m.lower()
    ], handler.messages

    loaded = {
        n.replace(".default_0", "").replace(".default", ""): p for n, p in fresh.named_parameters() if "lora_" in n
    }
    assert sorted(loaded) == sorted(k.removeprefix("transformer.") for k in sd)
    ref, got = velocity(result.model, flux), velocity(adapter_for(fresh, flux), flux)
    plain = velocity(adapter_for(base(flux), flux), flux)
    assert (ref - plain).abs().max() > 1e-3  # the LoRA does change the output
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("flux", [True, False], ids=["flux", "sd3"])
def test_kohya_export_names_shapes_and_alpha_give_the_exact_delta(flux, tmp_path):
    result = distilled(flux)
    sd = load_file(export_kohya_lora(result, tmp_path / "kohya.safetensors"))
    factors = lora_factors(result)
    assert len(sd) == 3 * len(factors)
    for name, (a, b, scale) in factors.items():
        key = kohya_name(name, type(result.model))
        assert key.startswith("lora_transformer_") and "." not in key
        down, up, alpha = sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"], sd[f"{key}.alpha"]
        assert down.shape == a.shape and up.shape == b.shape and alpha.ndim == 0
        assert alpha.item() == ALPHA
        torch.testing.assert_close(alpha / down.shape[0] * up @ down, scale * b @ a)
    if flux:
        key = kohya_name("transformer_blocks.0.attn.to_q", type(result.model))
        assert key == "lora_transformer_transformer_blocks_0_attn_to_q" and f"{key}.lora_down.weight" in sd


def test_diffusers_flux_kohya_loader_reads_the_attention_keys_with_their_alpha(tmp_path):
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    result = distilled(True)
    sd = load_file(export_kohya_lora(result, tmp_path / "kohya.safetensors"))
    attn = {k: v for k, v in sd.items() if "_attn_" in k}  # diffusers' loader maps only the attention layers
    converted = _convert_kohya_flux_lora_to_diffusers(dict(attn))
    factors = lora_factors(result)
    names = {n for n in factors if ".attn." in n}
    assert names and {k.removeprefix("transformer.").rsplit(".lora_", 1)[0] for k in converted} == names
    for name in names:
        a, b, scale = factors[name]
        delta = converted[f"transformer.{name}.lora_B.weight"] @ converted[f"transformer.{name}.lora_A.weight"]
        torch.testing.assert_close(delta, scale * b @ a)


def test_export_refuses_a_model_without_a_diffusers_transformer(tmp_path):
    result = scfm.DistilledModel(torch.nn.Linear(2, 2), scfm.LoraSpec(targets=("x",)))
    with pytest.raises(ValueError, match="FluxAdapter"):
        export_diffusers_lora(result, tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="no LoRA"):
        export_kohya_lora(FluxAdapter(tiny_flux()), tmp_path / "x.safetensors")
