"""Contracts of the diffusers model adapters (Flux, SD3) on tiny random transformers built locally."""

import json
import math

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel, SD3Transformer2DModel  # noqa: E402

import scfm  # noqa: E402
from scfm.models.adapters import ADAPTERS, get_adapter  # noqa: E402
from scfm.models.flux import FluxAdapter, draw_guidance, latent_image_ids, pack_latents, unpack_latents, with_guidance  # noqa: E402
from scfm.models.sd3 import SD3Adapter  # noqa: E402
from scfm.weights.lora import LoraSpec, attach_lora, matching_modules  # noqa: E402

pytestmark = pytest.mark.diffusers

C, H, W, L, D = 4, 8, 6, 5, 32  # latent channels, latent height/width, text tokens, text width


def tiny_flux(seed=0, guidance_embeds=True):
    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * C,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=D,
        pooled_projection_dim=16,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 6, 6),
    ).eval()


def tiny_sd3(seed=0):
    torch.manual_seed(seed)
    return SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=C,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=D,
        pooled_projection_dim=16,
        out_channels=C,
        pos_embed_max_size=16,
    ).eval()


def flux_cond(b, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {
        "prompt_embeds": torch.randn(b, L, D, generator=g),
        "pooled_prompt_embeds": torch.randn(b, 16, generator=g),
        "guidance": draw_guidance(b, g),
    }


def sd3_cond(b, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {
        "prompt_embeds": torch.randn(b, L, D, generator=g),
        "pooled_prompt_embeds": torch.randn(b, 16, generator=g),
        "negative_prompt_embeds": torch.randn(1, L, D, generator=g),
        "negative_pooled_prompt_embeds": torch.randn(1, 16, generator=g),
    }


def latents(b, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, C, H, W, generator=g), torch.rand(b, generator=g)


# ----------------------------------------------------------------------------- registry


def test_registry_names_the_builtin_adapters():
    assert get_adapter("flux") is FluxAdapter and get_adapter("sd3") is SD3Adapter
    assert {"flux", "sd3"} <= set(ADAPTERS)
    with pytest.raises(ValueError, match="no model adapter named 'nope'"):
        get_adapter("nope")


def test_adapter_refuses_the_wrong_transformer_class():
    with pytest.raises(ValueError, match="wraps a FluxTransformer2DModel"):
        FluxAdapter(tiny_sd3())


# ----------------------------------------------------------------------------- Flux


def test_flux_velocity_has_the_latent_shape_and_dtype():
    adapter = FluxAdapter(tiny_flux())
    x, t = latents(3)
    with torch.no_grad():
        v = adapter(x, t, **flux_cond(3))
    assert v.shape == x.shape and v.dtype == x.dtype and torch.isfinite(v).all()
    assert adapter.seq_len(x) == (H // 2) * (W // 2)


def test_flux_packing_round_trips_exactly_through_an_identity_transformer():
    adapter = FluxAdapter(tiny_flux())
    seen = {}

    def identity(hidden_states, timestep, img_ids, txt_ids, **kw):
        seen.update(timestep=timestep, img_ids=img_ids, txt_ids=txt_ids, tokens=hidden_states)
        return (hidden_states,)

    adapter.transformer.forward = identity
    x, t = latents(2)
    assert torch.equal(adapter(x, t, **flux_cond(2)), x)
    assert torch.equal(unpack_latents(pack_latents(x), H, W), x)
    assert seen["tokens"].shape == (2, (H // 2) * (W // 2), 4 * C)
    assert torch.equal(seen["timestep"], t)  # t in [0, 1]: the transformer scales by 1000 inside
    assert seen["txt_ids"].shape == (L, 3) and not seen["txt_ids"].any()
    assert seen["img_ids"].shape == ((H // 2) * (W // 2), 3)


def test_flux_packing_matches_diffusers_pipeline_helpers():
    from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

    x, _ = latents(2)
    assert torch.equal(pack_latents(x), FluxPipeline._pack_latents(x, 2, C, H, W))
    assert torch.equal(
        latent_image_ids(H, W), FluxPipeline._prepare_latent_image_ids(2, H // 2, W // 2, "cpu", torch.float32)
    )
    tokens = pack_latents(x)
    assert torch.equal(
        unpack_latents(tokens, H, W), FluxPipeline._unpack_latents(tokens, H * 8, W * 8, vae_scale_factor=8)
    )


def test_guidance_is_drawn_per_sample_and_reproducible_from_a_generator():
    a = draw_guidance(16, torch.Generator().manual_seed(7))
    b = draw_guidance(16, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.shape == (16,)
    assert a.min() >= 0 and a.max() <= 7.5 and a.unique().numel() == 16
    data = [{"x0": torch.zeros(4, C, H, W)}] * 2
    first, second = with_guidance(data, torch.Generator().manual_seed(0))
    assert first["guidance"].shape == (4,) and not torch.equal(first["guidance"], second["guidance"])


def test_flux_guidance_is_required_exactly_when_the_model_embeds_it():
    x, t = latents(2)
    cond = flux_cond(2)
    with pytest.raises(ValueError, match="guidance-distilled"):
        FluxAdapter(tiny_flux())(x, t, **{k: v for k, v in cond.items() if k != "guidance"})
    with pytest.raises(ValueError, match="no guidance embedding"):
        FluxAdapter(tiny_flux(guidance_embeds=False))(x, t, **cond)
    with pytest.raises(ValueError, match="unknown cond key"):
        FluxAdapter(tiny_flux())(x, t, prompt_embed=cond["prompt_embeds"], **cond)


# ----------------------------------------------------------------------------- SD3


def test_sd3_velocity_has_the_latent_shape():
    adapter = SD3Adapter(tiny_sd3())
    x, t = latents(3)
    with torch.no_grad():
        v = adapter(x, t, **sd3_cond(3))
    assert v.shape == x.shape and torch.isfinite(v).all()
    assert adapter.seq_len(x) == (H // 2) * (W // 2)


def test_sd3_cfg_is_one_doubled_call_equal_to_two_separate_calls():
    adapter = SD3Adapter(tiny_sd3(), guidance_scale=3.5, cfg_mode="runtime")
    x, t = latents(2)
    cond = sd3_cond(2)
    calls = []
    adapter.transformer.register_forward_hook(
        lambda m, a, kw, out: calls.append(kw["hidden_states"].shape[0]), with_kwargs=True
    )
    with torch.no_grad():
        guided = adapter(x, t, **cond)
        assert calls == [4]  # one call on the doubled batch
        with adapter.guided(False):
            v_c = adapter(x, t, **cond)
        neg = {
            "prompt_embeds": cond["negative_prompt_embeds"].expand(2, -1, -1),
            "pooled_prompt_embeds": cond["negative_pooled_prompt_embeds"].expand(2, -1),
        }
        v_neg = SD3Adapter(adapter.transformer, cfg_mode="none")(x, t, **neg)
    torch.testing.assert_close(guided, v_c + 3.5 * (v_c - v_neg), rtol=1e-4, atol=1e-5)


def test_sd3_baked_mode_turns_cfg_off_only_for_the_student_pass():
    adapter = SD3Adapter(tiny_sd3(), cfg_mode="baked")
    assert adapter.cfg_active
    with adapter.student_pass():
        assert not adapter.cfg_active
    assert adapter.cfg_active
    with pytest.raises(RuntimeError), adapter.guided(False):
        raise RuntimeError("boom")
    assert adapter.cfg_active  # restored after an exception
    with SD3Adapter(tiny_sd3(), cfg_mode="runtime").student_pass() as ctx:
        assert ctx is None
    x, t = latents(1)
    with pytest.raises(ValueError, match="negative_prompt_embeds"):
        adapter(x, t, prompt_embeds=torch.zeros(1, L, D), pooled_prompt_embeds=torch.zeros(1, 16))


def test_sd3_passes_t_times_1000():
    adapter = SD3Adapter(tiny_sd3(), cfg_mode="none")
    seen = {}
    adapter.transformer.forward = lambda hidden_states, timestep, **kw: (seen.setdefault("t", timestep), hidden_states)[
        1:
    ]
    x, t = latents(2)
    adapter(x, t, **{k: v for k, v in sd3_cond(2).items() if not k.startswith("negative")})
    torch.testing.assert_close(seen["t"], t * 1000)


# ----------------------------------------------------------------------------- LoRA


@pytest.mark.parametrize(
    "make", [lambda: FluxAdapter(tiny_flux()), lambda: SD3Adapter(tiny_sd3())], ids=["flux", "sd3"]
)
def test_default_lora_targets_match_and_start_as_a_zero_delta(make):
    adapter = make()
    x, t = latents(2)
    cond = flux_cond(2) if isinstance(adapter, FluxAdapter) else sd3_cond(2)
    with torch.no_grad():
        before = adapter(x, t, **cond)
    spec = LoraSpec(targets=adapter.default_lora_targets, rank=2, alpha=2)
    names = matching_modules(adapter, spec)
    assert names and all(n.startswith("transformer.") for n in names)
    attach_lora(adapter, spec)
    with torch.no_grad():
        assert torch.equal(adapter(x, t, **cond), before)


# ----------------------------------------------------------------------------- loading


def test_from_pretrained_loads_a_saved_transformer_offline(tmp_path):
    transformer = tiny_flux()
    transformer.save_pretrained(tmp_path / "transformer")
    FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(tmp_path / "scheduler")
    adapter = FluxAdapter.from_pretrained(tmp_path, local_files_only=True)
    x, t = latents(2)
    cond = flux_cond(2)
    with torch.no_grad():
        assert torch.equal(adapter(x, t, **cond), FluxAdapter(transformer)(x, t, **cond))
    sd3 = SD3Adapter.from_pretrained(
        _saved_sd3(tmp_path / "sd3"), local_files_only=True, adapter_kwargs={"guidance_scale": 2.0}
    )
    assert isinstance(sd3.transformer, SD3Transformer2DModel) and sd3.guidance_scale == 2.0


def _saved_sd3(root):
    tiny_sd3().save_pretrained(root / "transformer")
    return root


def test_from_pretrained_names_a_wrong_transformer_class(tmp_path):
    with pytest.raises(ValueError, match="holds a SD3Transformer2DModel.*'sd3' adapter"):
        FluxAdapter.from_pretrained(_saved_sd3(tmp_path), local_files_only=True)


def test_from_pretrained_names_a_missing_subfolder(tmp_path):
    tiny_flux().save_pretrained(tmp_path)  # the transformer folder itself, no transformer/ inside
    with pytest.raises(ValueError, match="no 'transformer' subfolder.*subfolder=None"):
        FluxAdapter.from_pretrained(tmp_path, local_files_only=True)
    assert isinstance(FluxAdapter.from_pretrained(tmp_path, subfolder=None, local_files_only=True), FluxAdapter)


def test_from_pretrained_refuses_a_non_flow_matching_scheduler(tmp_path):
    _saved_sd3(tmp_path)
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDIMScheduler"}))
    with pytest.raises(ValueError, match="DDIMScheduler, not a flow-matching one"):
        SD3Adapter.from_pretrained(tmp_path, local_files_only=True)


# ----------------------------------------------------------------------------- distillation


def test_three_step_distillation_of_tiny_flux_has_finite_loss():
    adapter = FluxAdapter(tiny_flux())
    gen = torch.Generator().manual_seed(3)
    data = [
        {
            "x0": torch.randn(4, C, H, W, generator=gen),
            **{k: v for k, v in flux_cond(4, seed=i).items() if k != "guidance"},
        }
        for i in range(3)
    ]
    config = scfm.DistillConfig(
        max_steps=3,
        lr=1e-3,
        lora=scfm.LoraSpec(targets=FluxAdapter.default_lora_targets, rank=2, alpha=2.0),
        plan=scfm.PlanConfig(teacher_min=4, teacher_max=4, resolution_shift_prob=0.1),
        log_every=1,
    )
    result = scfm.distill(adapter, with_guidance(data, torch.Generator().manual_seed(4)), config, progress=False)
    assert len(result.history) == 3
    assert all(math.isfinite(r["loss"]) for r in result.history)
    x = scfm.sample(result, torch.randn(1, C, H, W), steps=2, **flux_cond(1))
    assert x.shape == (1, C, H, W) and torch.isfinite(x).all()


def test_two_step_distillation_of_tiny_sd3_with_runtime_cfg_has_finite_loss():
    adapter = SD3Adapter(tiny_sd3(), guidance_scale=3.5, cfg_mode="runtime")
    gen = torch.Generator().manual_seed(5)
    neg = sd3_cond(1)
    data = [
        {
            "x0": torch.randn(2, C, H, W, generator=gen),
            **{k: v.expand(2, *v.shape[1:]) if k.startswith("negative") else v for k, v in sd3_cond(2, seed=i).items()},
        }
        for i in range(2)
    ]
    config = scfm.DistillConfig(
        max_steps=2,
        lr=1e-3,
        lora=scfm.LoraSpec(targets=SD3Adapter.default_lora_targets, rank=2, alpha=2.0),
        plan=scfm.PlanConfig(teacher_min=4, teacher_max=4),
        grad_clip=2.0,
        log_every=1,
    )
    result = scfm.distill(adapter, data, config, progress=False)
    assert [math.isfinite(r["loss"]) for r in result.history] == [True, True]
    x = scfm.sample(result, torch.randn(1, C, H, W), steps=2, **neg)
    assert x.shape == (1, C, H, W)


def test_adapter_runs_a_bf16_transformer_on_float32_latents():
    adapter = FluxAdapter(tiny_flux().to(torch.bfloat16))
    x, t = latents(2)
    with torch.no_grad():
        v = adapter(x, t, **flux_cond(2))
    assert v.dtype == torch.float32 and v.shape == x.shape and torch.isfinite(v).all()


def test_scfm_sample_of_a_diffusers_adapter_defaults_to_the_family_shift():
    adapter = FluxAdapter(tiny_flux()).eval()
    noise, cond = latents(2)[0], flux_cond(2)
    default = scfm.sample(adapter, noise, steps=2, **cond)
    torch.testing.assert_close(default, scfm.sample(adapter, noise, steps=2, shift=FluxAdapter.default_shift, **cond))
    assert not torch.allclose(default, scfm.sample(adapter, noise, steps=2, shift=1.0, **cond))


def test_pipeline_shift_is_the_family_default_a_number_or_the_resolution_shift():
    from types import SimpleNamespace

    from scfm.objective.grids import resolution_mu
    from scfm.pipelines.sampling import resolve_shift

    pipe = SimpleNamespace(
        default_sample_size=64, vae_scale_factor=8, transformer=SimpleNamespace(config=SimpleNamespace(patch_size=2))
    )
    assert (FluxAdapter.default_shift, SD3Adapter.default_shift, get_adapter("wan").default_shift) == (3.25, 3.0, 3.0)
    assert resolve_shift(FluxAdapter, pipe, None, None, None) == 3.25
    assert resolve_shift(SD3Adapter, pipe, 2.0, None, None) == 2.0
    # 512 x 512 px: a 64 x 64 latent, 32 x 32 = 1024 tokens after Flux's 2 x 2 packing or SD3's patch 2
    for cls in (FluxAdapter, SD3Adapter):
        assert resolve_shift(cls, pipe, "auto", None, None) == pytest.approx(math.exp(resolution_mu(1024)))
    assert resolve_shift(FluxAdapter, pipe, "auto", 1024, 1024) == pytest.approx(math.exp(resolution_mu(4096)))
    with pytest.raises(ValueError, match="shift='fast' must be a number > 0 or 'auto'"):
        resolve_shift(FluxAdapter, pipe, "fast", None, None)
