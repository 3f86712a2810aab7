"""Contracts of the Wan 2.1 text-to-video adapter on a tiny random transformer and a tiny WanPipeline built locally."""

import json
import logging
import math

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import DDIMScheduler, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel  # noqa: E402
from diffusers.utils import logging as diffusers_logging  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import scfm  # noqa: E402
from scfm.export import export_diffusers_lora, export_kohya_lora, lora_factors  # noqa: E402
from scfm.models.adapters import (
    get_adapter,  # noqa: E402
    is_flow_matching_scheduler,  # noqa: E402
)
from scfm.models.cfg import combine_cfg  # noqa: E402
from scfm.models.tiny import T5_WIDTH, WAN_LATENT_CHANNELS, WAN_LATENTS_MEAN, WAN_LATENTS_STD, build_tiny_wan_pipeline  # noqa: E402
from scfm.models.wan import WAN_LORA_TARGETS, WanAdapter, denormalize_latents, normalize_latents  # noqa: E402
from scfm.weights.lora import LoraSpec, attach_lora, linear_module_names, lora_named_parameters, matching_modules  # noqa: E402

pytestmark = pytest.mark.diffusers

C, F, H, W, L, D = (
    WAN_LATENT_CHANNELS,
    2,
    4,
    6,
    7,
    T5_WIDTH,
)  # latent channels/frames/height/width, text tokens, text width
PX_H, PX_W, FRAMES = 8 * H, 8 * W, 4 * (F - 1) + 1  # pixel size and frame count of the tiny pipeline's videos


def tiny_wan(seed=0):
    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=C,
        out_channels=C,
        text_dim=D,
        freq_dim=16,
        ffn_dim=32,
        num_layers=1,
        rope_max_seq_len=32,
    ).eval()


def wan_cond(b, seed=1, negative=True):
    g = torch.Generator().manual_seed(seed)
    cond = {"prompt_embeds": torch.randn(b, L, D, generator=g)}
    if negative:
        cond["negative_prompt_embeds"] = torch.randn(1, L, D, generator=g)
    return cond


def latents(b, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, C, F, H, W, generator=g), torch.rand(b, generator=g)


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    return build_tiny_wan_pipeline(tmp_path_factory.mktemp("wan"))


def load_pipe(folder):
    pipe = WanPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ----------------------------------------------------------------------------- velocity


def test_registry_finds_the_wan_adapter():
    from scfm.models import adapters

    assert (
        "scfm.models.wan" in adapters._BUILTIN_MODULES
    )  # get_adapter("wan") works without importing scfm.models.wan first
    assert get_adapter("wan") is WanAdapter
    assert WanAdapter.pipeline_class_name == "WanPipeline"


def test_velocity_has_the_video_latent_shape_and_dtype():
    adapter = WanAdapter(tiny_wan())
    x, t = latents(3)
    with torch.no_grad():
        v = adapter(x, t, **wan_cond(3))
    assert v.shape == x.shape and v.dtype == x.dtype and torch.isfinite(v).all()
    assert adapter.seq_len(x) == F * (H // 2) * (W // 2)


def test_time_is_passed_as_t_times_1000_in_float32_and_latents_unchanged():
    adapter = WanAdapter(tiny_wan(), cfg_mode="none")
    seen = {}

    def identity(hidden_states, timestep, encoder_hidden_states, **kw):
        seen.update(hidden=hidden_states, timestep=timestep, text=encoder_hidden_states)
        return (hidden_states,)

    adapter.transformer.forward = identity
    x, t = latents(2)
    cond = wan_cond(2, negative=False)
    assert torch.equal(adapter(x, t, **cond), x)  # the transformer patchifies itself: x goes in as [B, C, F, h, w]
    assert seen["timestep"].dtype == torch.float32
    torch.testing.assert_close(seen["timestep"], t * 1000)
    assert torch.equal(seen["text"], cond["prompt_embeds"])


def test_bad_layouts_and_image_to_video_transformers_are_refused():
    adapter = WanAdapter(tiny_wan(), cfg_mode="none")
    cond = wan_cond(1, negative=False)
    with pytest.raises(ValueError, match=r"video latents x \[B, C, F, h, w\]"):
        adapter(torch.zeros(1, C, H, W), torch.zeros(1), **cond)
    with pytest.raises(ValueError, match="divisible by patch_size"):
        adapter(torch.zeros(1, C, F, H + 1, W), torch.zeros(1), **cond)
    with pytest.raises(ValueError, match="in_channels=4"):
        adapter(torch.zeros(1, C + 1, F, H, W), torch.zeros(1), **cond)
    with pytest.raises(ValueError, match="prompt_embeds"):
        adapter(torch.zeros(1, C, F, H, W), torch.zeros(1))
    i2v = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=2 * C,
        out_channels=C,
        text_dim=D,
        freq_dim=16,
        ffn_dim=32,
        num_layers=1,
        rope_max_seq_len=32,
        image_dim=8,
        added_kv_proj_dim=16,
    )
    with pytest.raises(ValueError, match="text-to-video transformer"):
        WanAdapter(i2v)


def test_cfg_is_one_doubled_call_equal_to_two_separate_calls():
    adapter = WanAdapter(tiny_wan(), guidance_scale=4.0, cfg_mode="runtime")
    x, t = latents(2)
    cond = wan_cond(2)
    calls = []
    adapter.transformer.register_forward_hook(
        lambda m, a, kw, out: calls.append(kw["hidden_states"].shape[0]), with_kwargs=True
    )
    with torch.no_grad():
        guided = adapter(x, t, **cond)
        assert calls == [4]  # one call on the doubled batch
        with adapter.guided(False):
            v_c = adapter(x, t, **cond)
        v_neg = WanAdapter(adapter.transformer, cfg_mode="none")(
            x, t, prompt_embeds=cond["negative_prompt_embeds"].expand(2, -1, -1)
        )
    torch.testing.assert_close(guided, v_c + 4.0 * (v_c - v_neg), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(combine_cfg(torch.cat([v_c, v_neg]), 4.0), v_c + 4.0 * (v_c - v_neg))


def test_baked_mode_turns_cfg_off_only_for_the_student_pass():
    adapter = WanAdapter(tiny_wan(), cfg_mode="baked")
    assert adapter.cfg_active
    with adapter.student_pass():
        assert not adapter.cfg_active
    assert adapter.cfg_active
    with pytest.raises(RuntimeError), adapter.guided(False):
        raise RuntimeError("boom")
    assert adapter.cfg_active  # restored after an exception
    with WanAdapter(tiny_wan(), cfg_mode="runtime").student_pass() as ctx:
        assert ctx is None
    x, t = latents(1)
    with pytest.raises(ValueError, match="negative_prompt_embeds"):
        adapter(x, t, **wan_cond(1, negative=False))
    with pytest.raises(ValueError, match="cfg_mode='sometimes' must be one of"):
        WanAdapter(tiny_wan(), cfg_mode="sometimes")


def test_guided_velocity_is_the_pipelines_cfg_with_guidance_scale_w_plus_1(wan_dir):
    """What WanPipeline computes at a step (both transformer calls captured) is the adapter's
    guided velocity at t = timestep / 1000 with w = guidance_scale - 1."""
    pipe = load_pipe(wan_dir)
    calls = []
    pipe.transformer.register_forward_hook(
        lambda m, a, kw, out: calls.append((kw["hidden_states"], kw["timestep"], kw["encoder_hidden_states"], out[0])),
        with_kwargs=True,
    )
    pipe(
        "a red cat",
        height=PX_H,
        width=PX_W,
        num_frames=FRAMES,
        num_inference_steps=1,
        guidance_scale=4.5,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
    )
    (x, timestep, prompt, v_c), (_, _, neg, v_neg) = calls
    pipeline_v = v_neg + 4.5 * (v_c - v_neg)
    adapter = WanAdapter(pipe.transformer, guidance_scale=3.5)
    with torch.no_grad():
        v = adapter(x, timestep.float() / 1000, prompt_embeds=prompt, negative_prompt_embeds=neg)
    torch.testing.assert_close(v, pipeline_v, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- LoRA


def test_default_lora_targets_match_every_linear_and_start_as_a_zero_delta():
    adapter = WanAdapter(tiny_wan())
    x, t = latents(2)
    cond = wan_cond(2)
    with torch.no_grad():
        before = adapter(x, t, **cond)
    assert WanAdapter.recommended_config["lora.targets"] == WAN_LORA_TARGETS == adapter.default_lora_targets
    scfm.DistillConfig.from_dict(WanAdapter.recommended_config).validate()
    spec = LoraSpec(targets=adapter.default_lora_targets, rank=2, alpha=2)
    names = matching_modules(adapter, spec)
    assert sorted(names) == sorted(linear_module_names(adapter))  # T2V Wan: every Linear is an SCFM target
    assert all(n.startswith("transformer.") for n in names)
    attach_lora(adapter, spec)
    with torch.no_grad():
        assert torch.equal(adapter(x, t, **cond), before)


# ----------------------------------------------------------------------------- loading


def test_from_pretrained_loads_offline_with_wans_unipc_flow_scheduler(tmp_path):
    transformer = tiny_wan()
    transformer.save_pretrained(tmp_path / "transformer")
    UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0).save_pretrained(
        tmp_path / "scheduler"
    )
    adapter = WanAdapter.from_pretrained(
        tmp_path, local_files_only=True, adapter_kwargs={"guidance_scale": 2.0, "cfg_mode": "baked"}
    )
    assert adapter.guidance_scale == 2.0 and adapter.cfg_mode == "baked"
    x, t = latents(2)
    cond = wan_cond(2)
    with torch.no_grad():
        assert torch.equal(adapter(x, t, **cond), WanAdapter(transformer, guidance_scale=2.0)(x, t, **cond))


def test_from_pretrained_names_a_wrong_transformer_class(tmp_path):
    from test_adapters import tiny_sd3

    tiny_sd3().save_pretrained(tmp_path / "transformer")
    with pytest.raises(ValueError, match="holds a SD3Transformer2DModel.*'sd3' adapter"):
        WanAdapter.from_pretrained(tmp_path, local_files_only=True)


@pytest.mark.parametrize(
    "scheduler", [DDIMScheduler(), UniPCMultistepScheduler(use_flow_sigmas=True)], ids=["ddim", "unipc-epsilon"]
)
def test_from_pretrained_refuses_a_non_flow_matching_scheduler(tmp_path, scheduler):
    tiny_wan().save_pretrained(tmp_path / "transformer")
    scheduler.save_pretrained(tmp_path / "scheduler")
    name = type(scheduler).__name__
    with pytest.raises(ValueError, match=f"{name} with prediction_type='epsilon', not a flow-matching one"):
        WanAdapter.from_pretrained(tmp_path, local_files_only=True)
    with pytest.raises(
        ValueError, match="not a flow-matching one"
    ):  # also when pointed at the transformer folder itself
        WanAdapter.from_pretrained(tmp_path / "transformer", subfolder=None, local_files_only=True)


def test_flow_matching_schedulers_are_recognized_by_prediction_type():
    assert is_flow_matching_scheduler({"_class_name": "FlowMatchEulerDiscreteScheduler"})
    assert is_flow_matching_scheduler(
        dict(UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True).config)
    )
    assert not is_flow_matching_scheduler(
        dict(UniPCMultistepScheduler(use_flow_sigmas=True).config)
    )  # eps-prediction on a flow grid
    assert not is_flow_matching_scheduler(json.loads(DDIMScheduler().to_json_string()))


def test_bf16_transformer_keeps_its_fp32_modules_and_runs_on_float32_latents(tmp_path):
    tiny_wan().save_pretrained(tmp_path / "transformer")
    adapter = WanAdapter.from_pretrained(tmp_path, torch_dtype=torch.bfloat16, local_files_only=True)
    assert adapter.transformer.scale_shift_table.dtype == torch.float32  # diffusers' _keep_in_fp32_modules
    assert adapter.dtype == torch.bfloat16
    x, t = latents(2)
    with torch.no_grad():
        v = adapter(x, t, **wan_cond(2))
    assert v.dtype == torch.float32 and v.shape == x.shape and torch.isfinite(v).all()


# ----------------------------------------------------------------------------- distillation and export


def distilled_wan(transformer, alpha=4.0):
    adapter = WanAdapter(transformer, guidance_scale=4.0, cfg_mode="runtime")
    gen = torch.Generator().manual_seed(3)
    data = [{"x0": torch.randn(2, C, F, H, W, generator=gen), **wan_cond(2, seed=i)} for i in range(3)]
    config = scfm.DistillConfig(
        max_steps=3,
        lr=1e-3,
        lora=scfm.LoraSpec(targets=WanAdapter.default_lora_targets, rank=2, alpha=alpha),
        plan=scfm.PlanConfig(teacher_min=4, teacher_max=4, resolution_shift_prob=0.5),
        grad_clip=2.0,
        log_every=1,
        gradient_checkpointing=True,
    )
    return scfm.distill(adapter, data, config, progress=False)


def test_three_step_distillation_of_tiny_wan_with_runtime_cfg_has_finite_loss():
    result = distilled_wan(tiny_wan())
    assert (
        result.model.transformer.gradient_checkpointing
    )  # DistillConfig.gradient_checkpointing reached the transformer
    assert len(result.history) == 3 and all(math.isfinite(r["loss"]) for r in result.history)
    x = scfm.sample(result, torch.randn(1, C, F, H, W), steps=2, **wan_cond(1))
    assert x.shape == (1, C, F, H, W) and torch.isfinite(x).all()


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_exported_lora_loads_into_wan_pipeline_with_no_missing_keys_and_the_same_output(wan_dir, tmp_path):
    result = distilled_wan(load_pipe(wan_dir).transformer)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # three steps barely move B: make the delta large enough to see
        for name, p in lora_named_parameters(result.model):
            if ".lora_B." in name:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    path = export_diffusers_lora(result, tmp_path / "lora" / "wan_lora.safetensors")
    assert len(load_file(path)) == 2 * len(lora_factors(result))
    kohya = load_file(export_kohya_lora(result, tmp_path / "lora" / "wan_kohya.safetensors"))
    assert kohya and all(k.startswith("diffusion_model.") for k in kohya)  # ComfyUI's original Wan names

    pipe = load_pipe(wan_dir)
    handler = Collect()
    logger = diffusers_logging.get_logger("diffusers")
    logger.addHandler(handler)
    try:
        pipe.load_lora_weights(str(path.parent), weight_name=path.name)
    finally:
        logger.removeHandler(handler)
    assert not [
        m for m in handler.messages if any(w in m.lower() for w in ("unexpected", "missing", "incompatible"))
    ], handler.messages
    loaded = {n.split(".lora_")[0] for n, _ in pipe.transformer.named_parameters() if ".lora_A." in n}
    assert loaded == set(lora_factors(result))  # every distilled layer, nothing else

    x, t = latents(2, seed=11)
    cond = wan_cond(2, seed=12)
    with torch.no_grad():
        ref = result.model(x, t, **cond)
        got = WanAdapter(pipe.transformer, guidance_scale=4.0)(x, t, **cond)
        plain = WanAdapter(load_pipe(wan_dir).transformer, guidance_scale=4.0)(x, t, **cond)
    assert (ref - plain).abs().max() > 1e-3  # the LoRA does change the output
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- pipeline hooks


def test_encode_prompts_gives_one_row_per_prompt_and_one_negative_row(wan_dir):
    pipe = load_pipe(wan_dir)
    cond = WanAdapter.encode_prompts(pipe, ["a red cat", "a dog runs on grass"], "cpu")
    assert set(cond) == set(WanAdapter.cond_keys)
    assert cond["prompt_embeds"].shape == (2, 512, D) and cond["negative_prompt_embeds"].shape == (1, 512, D)
    assert not cond["prompt_embeds"].requires_grad
    pos, neg = pipe.encode_prompt(["a dog runs on grass"], negative_prompt="", max_sequence_length=512, device="cpu")
    torch.testing.assert_close(cond["prompt_embeds"][1:], pos)
    torch.testing.assert_close(cond["negative_prompt_embeds"], neg)
    other = WanAdapter(pipe.transformer, negative_prompt="blurry").encode_cond(pipe, ["a red cat"], "cpu")
    assert not torch.equal(other["negative_prompt_embeds"], cond["negative_prompt_embeds"])


def test_generate_latents_gives_finite_normalized_x0_that_decodes_to_the_pipelines_video(wan_dir):
    pipe = load_pipe(wan_dir)
    prompts = ["a red cat", "blue sky"]
    x0 = WanAdapter.generate_latents(
        pipe, prompts, PX_H, PX_W, steps=2, guidance=3.0, generator=torch.Generator().manual_seed(0)
    )
    assert x0.shape == (2, C, F, H, W) and x0.dtype == torch.float32 and torch.isfinite(x0).all()
    video = pipe(
        prompts,
        height=PX_H,
        width=PX_W,
        num_frames=FRAMES,
        num_inference_steps=2,
        guidance_scale=4.0,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    ).frames  # [B, F, 3, H, W] in [0, 1]
    torch.testing.assert_close(WanAdapter.decode_latents(pipe, x0), video.permute(0, 2, 1, 3, 4), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="num_frames=4 must be 4k \\+ 1"):
        WanAdapter.generate_latents(pipe, prompts, PX_H, PX_W, 2, 3.0, torch.Generator(), num_frames=4)
    with pytest.raises(ValueError, match="multiples of 16"):
        WanAdapter.generate_latents(pipe, prompts, PX_H + 8, PX_W, 2, 3.0, torch.Generator())
    assert WanAdapter.pixel_multiple(wan_dir, local_files_only=True) == 16


def test_encode_decode_round_trip_shapes_and_latent_normalization(wan_dir):
    pipe = load_pipe(wan_dir)
    video = torch.rand(2, 3, FRAMES, PX_H, PX_W, generator=torch.Generator().manual_seed(0)) * 2 - 1
    x0 = WanAdapter.encode_images(pipe, video)
    assert x0.shape == (2, C, F, H, W) and x0.dtype == torch.float32
    with torch.no_grad():
        z = pipe.vae.encode(video).latent_dist.mode()
    mean, std = torch.tensor(WAN_LATENTS_MEAN).view(1, C, 1, 1, 1), torch.tensor(WAN_LATENTS_STD).view(1, C, 1, 1, 1)
    torch.testing.assert_close(x0, (z - mean) / std)
    torch.testing.assert_close(denormalize_latents(normalize_latents(z, pipe.vae), pipe.vae), z)
    sampled = WanAdapter.encode_images(pipe, video, generator=torch.Generator().manual_seed(1))
    assert sampled.shape == x0.shape and not torch.equal(sampled, x0)  # a generator samples the posterior
    out = WanAdapter.decode_latents(pipe, x0)
    assert out.shape == video.shape and out.min() >= 0 and out.max() <= 1
    with pytest.raises(ValueError, match="4k \\+ 1"):
        WanAdapter.encode_images(pipe, video[:, :, :4])
    image = WanAdapter.encode_images(pipe, video[:, :, 0])  # an image [B, 3, H, W] is a one-frame video
    torch.testing.assert_close(image, WanAdapter.encode_images(pipe, video[:, :, :1]))
    assert image.shape == (2, C, 1, H, W)


# ----------------------------------------------------------------------------- end to end through the CLI


def test_end_to_end_generate_data_distill_export_load_and_sample(wan_dir, tmp_path):
    """generate-data (2 prompts x 2 buckets) -> distill from the cache -> export (diffusers, comfyui)
    -> load_lora_weights into WanPipeline -> 2-step samples: scfm's Euler on the pipeline's transformer
    equals the distilled model's, and WanPipeline itself runs with the LoRA."""
    from scfm.commands.cli import main
    from scfm.data.cache_store import SHARED_FILE, read_index
    from scfm.fileio import load_safetensors
    from scfm.pipelines.lora import load_lora
    from scfm.train.run_folder import load_run

    (tmp_path / "prompts.txt").write_text("a red cat\na blue dog\n")
    cache, run = tmp_path / "cache", tmp_path / "run"
    assert (
        main(
            [
                "generate-data",
                "--model",
                str(wan_dir),
                "--prompts",
                str(tmp_path / "prompts.txt"),
                "--out",
                str(cache),
                "--steps",
                "2",
                "--buckets",
                "32x32,48x32",
                "--dtype",
                "fp32",
                "--device",
                "cpu",
                "--local-files-only",
                "--shard-size",
                "2",
            ]
        )
        == 0
    )
    entries, _ = read_index(cache)
    assert len(entries) == 4 and {e["bucket"] for e in entries} == {"32x32", "48x32"}
    for entry in entries:
        w, h = map(int, entry["bucket"].split("x"))
        shard = load_safetensors(cache / entry["shard"])
        assert shard["x0"].shape[1:] == (C, F, h // 8, w // 8) and torch.isfinite(shard["x0"]).all()
        assert set(shard) == {"x0", "prompt_embeds"}
    assert load_safetensors(cache / SHARED_FILE)["negative_prompt_embeds"].shape == (1, 512, D)

    config = {
        "teacher": f"diffusers:{wan_dir}",
        "data": f"cache:{cache}",
        "output_dir": str(run),
        "max_steps": 3,
        "batch_size": 2,
        "lr": 1.0e-2,
        "lora.rank": 2,
        "lora.alpha": 4.0,
        "lora.targets": list(WAN_LORA_TARGETS),
        "plan.teacher_min": 4,
        "plan.teacher_max": 4,
        "log_every": 1,
        "logger": "jsonl",
        "local_files_only": True,
        "final_weights": "student",
        "grad_clip": 2.0,
        "plan.resolution_shift_prob": 0.0,
        "cfg_mode": "runtime",
        "cfg_scale": 3.5,
    }
    (tmp_path / "config.yaml").write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in config.items()) + "\n")
    assert main(["distill", str(tmp_path / "config.yaml")]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(math.isfinite(r["loss"]) for r in records)
    lora, comfy = tmp_path / "lora.safetensors", tmp_path / "comfy.safetensors"
    for fmt, out in (("diffusers", lora), ("comfyui", comfy)):
        flags = ["--weights", "student", "--dtype", "fp32"]  # float32: compared with the run's own LoRA to 1e-4
        assert main(["export", "--run", str(run), "--format", fmt, "--out", str(out), *flags]) == 0
    assert "diffusion_model.blocks.0.self_attn.q.lora_up.weight" in load_safetensors(comfy)  # original Wan names
    fused = tmp_path / "fused"
    assert main(["export", "--run", str(run), "--format", "fused", "--out", str(fused), "--weights", "student"]) == 0
    saved = json.loads((run / "scfm_config.json").read_text())["lora_scales"]
    for path in (lora, comfy, *sorted(fused.glob("*.safetensors"))):  # every export says how to use it
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata()
        assert meta["modelspec.architecture"].startswith("wan")
        assert float(meta["scfm.shift"]) == WanAdapter.default_shift
        assert meta["scfm.cfg_mode"] == "runtime" and float(meta["scfm.guidance"]) == 3.5
        if path.parent != fused:
            assert json.loads(meta["scfm.lora_scales"]) == {n: float(k) for n, k in saved.items()}

    result, _ = load_run(run, "student")
    pipe = load_pipe(wan_dir)
    load_lora(pipe, lora)  # raises on missing / unexpected keys
    adapter = WanAdapter(pipe.transformer, guidance_scale=3.5)
    cond = WanAdapter.encode_prompts(pipe, ["a red cat"], "cpu")
    noise = torch.randn(1, C, F, 4, 6, generator=torch.Generator().manual_seed(5))
    x0 = scfm.sample(adapter, noise, steps=2, shift=3.0, **cond)
    torch.testing.assert_close(
        x0, scfm.sample(result, noise, steps=2, shift=3.0, lora_scale=1.0, **cond), atol=1e-4, rtol=1e-4
    )
    video = WanAdapter.decode_latents(pipe, x0)
    assert video.shape == (1, 3, FRAMES, 32, 48) and torch.isfinite(video).all()
    latents_out = WanAdapter.generate_latents(
        pipe, ["a red cat"], 32, 48, steps=2, guidance=3.5, generator=torch.Generator().manual_seed(5)
    )
    assert latents_out.shape == (1, C, F, 4, 6) and torch.isfinite(latents_out).all()
