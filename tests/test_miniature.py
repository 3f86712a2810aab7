"""The shipped miniature pipelines (flux-digits, sd3-digits): real diffusers pipelines trained on 8x8 digits."""

import importlib.resources
import json

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import FluxPipeline, StableDiffusion3Pipeline  # noqa: E402

from scfm.models.counted_text import TEXT_LOG_COUNT, compress_text, counted_attention  # noqa: E402
from scfm.models.flux import FluxAdapter, pack_latents, unpack_latents  # noqa: E402
from scfm.models.miniature import (  # noqa: E402
    DIGIT_WORDS,
    IMAGE_SIZE,
    LATENT_CHANNELS,
    MINIATURE_MODELS,
    TRAINING_FILE,
    digits_prompt,
    pipeline_digits,
    rgb_to_digits,
    shipped_pipeline_path,
    training_prompts,
)
from scfm.models.sd3 import SD3Adapter  # noqa: E402

pytestmark = pytest.mark.diffusers

PIPELINES = {"flux-digits": FluxPipeline, "sd3-digits": StableDiffusion3Pipeline}
ADAPTERS = {"flux-digits": FluxAdapter, "sd3-digits": SD3Adapter}


@pytest.fixture(scope="module", params=MINIATURE_MODELS)
def shipped(request):
    name = request.param
    pipe = PIPELINES[name].from_pretrained(shipped_pipeline_path(name), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return name, pipe


def test_every_file_of_the_shipped_folders_is_package_data():
    assets = importlib.resources.files("scfm") / "assets"
    for name in MINIATURE_MODELS:
        folder = assets / name
        for part in ("model_index.json", TRAINING_FILE, "transformer/config.json", "vae/config.json"):
            assert (folder / part).is_file(), f"{name}/{part}"
        record = json.loads((folder / TRAINING_FILE).read_text())
        assert record["command"].startswith(f"scfm pretrain --model {name}")
    assert shipped_pipeline_path("flux-digits").name == "flux-digits"
    with pytest.raises(ValueError, match="no miniature pipeline"):
        shipped_pipeline_path("sdxl-digits")


def test_shipped_pipelines_load_offline_with_their_family_settings(shipped):
    name, pipe = shipped
    assert pipe.vae.config.latent_channels == LATENT_CHANNELS and len(pipe.vae.config.block_out_channels) == 2
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    if name == "flux-digits":
        assert pipe.transformer.config.guidance_embeds and pipe.scheduler.config.use_dynamic_shifting
    else:
        assert pipe.scheduler.config.shift == 3.0


def test_a_two_step_pipeline_call_returns_8x8_images(shipped):
    name, pipe = shipped
    out = pipe(
        prompt=[digits_prompt(3), digits_prompt(8, 1)],
        height=IMAGE_SIZE,
        width=IMAGE_SIZE,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).images
    assert out.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE) and torch.isfinite(out).all()
    digits = rgb_to_digits(out)
    assert digits.shape == (2, 1, 8, 8) and digits.min() >= -1 and digits.max() <= 1


def test_the_adapter_forward_is_the_pipelines_first_step(shipped):
    """One pipeline step from the noise at t = 1 equals x - v(x, 1) with the adapter on the same embeddings."""
    name, pipe = shipped
    prompts = [digits_prompt(1), digits_prompt(7, 2)]
    noise = torch.randn(2, LATENT_CHANNELS, 4, 4, generator=torch.Generator().manual_seed(3))
    cond = ADAPTERS[name].encode_prompts(pipe, prompts, "cpu")
    if name == "flux-digits":
        latents = pack_latents(noise)
        adapter, guidance_scale, cond["guidance"] = FluxAdapter(pipe.transformer), 3.5, torch.tensor([3.5])
    else:
        latents = noise
        adapter, guidance_scale = SD3Adapter(pipe.transformer, guidance_scale=1.0), 2.0  # w = 1: true CFG
    got = pipe(
        prompt=prompts,
        height=IMAGE_SIZE,
        width=IMAGE_SIZE,
        num_inference_steps=1,
        guidance_scale=guidance_scale,
        latents=latents,
        output_type="latent",
    ).images
    if name == "flux-digits":
        got = unpack_latents(got, 4, 4)
    with torch.no_grad():
        want = noise - adapter(noise, torch.ones(2), **cond)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_compressed_text_with_counted_attention_equals_the_full_text(shipped):
    name, pipe = shipped
    adapter_cls = ADAPTERS[name]
    full = {
        k: v.float() for k, v in adapter_cls.encode_prompts(pipe, [digits_prompt(d) for d in range(3)], "cpu").items()
    }
    short = adapter_cls.compact_cond(full)
    assert short["prompt_embeds"].shape[1] < full["prompt_embeds"].shape[1] // 10
    assert short[TEXT_LOG_COUNT].shape == (1, short["prompt_embeds"].shape[1])
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(3, LATENT_CHANNELS, 4, 4, generator=g), torch.rand(3, generator=g)
    if name == "flux-digits":
        adapter, extra = FluxAdapter(pipe.transformer), {"guidance": torch.full((3,), 3.5)}
    else:
        adapter, extra = SD3Adapter(pipe.transformer, guidance_scale=2.0), {}
    cut = {k: v for k, v in short.items() if k != TEXT_LOG_COUNT}
    with torch.no_grad():
        want = adapter(x, t, **full, **extra)
        got = adapter(x, t, **short, **extra)  # the adapter counts the cut padding
        with counted_attention(pipe.transformer, short[TEXT_LOG_COUNT][0]):
            by_hand = adapter(x, t, **cut, **extra)
        plain = adapter(x, t, **cut, **extra)  # processors restored: the cut text alone is not the same model
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(by_hand, got)
    assert (plain - want).abs().max() > 1e-2


def test_compact_cond_leaves_text_without_an_identical_tail_alone():
    embeds = torch.randn(2, 6, 4)  # every position distinct, as a real T5's padding with position biases
    cond = {"prompt_embeds": embeds, "pooled_prompt_embeds": torch.randn(2, 3)}
    assert FluxAdapter.compact_cond(cond) is cond


def test_compress_text_keeps_the_distinct_prefix_and_counts_the_repeated_tail():
    row = torch.randn(1, 3, 2)
    embeds = torch.cat([row, row[:, -1:].expand(1, 5, 2)], dim=1)  # 3 + 5 tokens, the last 6 equal
    cut, log_count = compress_text(embeds)
    assert cut.shape == (1, 3, 2) and torch.equal(cut, embeds[:, :3])
    torch.testing.assert_close(log_count, torch.tensor([0.0, 0.0, float(torch.log(torch.tensor(6.0)))]))


def test_prompts_tokenize_to_distinct_ids_with_one_token_per_word(shipped):
    _, pipe = shipped
    prompts, labels = training_prompts()
    assert len(prompts) == 31 and labels[-1] == -1 and prompts[-1] == ""
    for tok in (pipe.tokenizer, getattr(pipe, "tokenizer_3", None) or pipe.tokenizer_2):
        ids = [tuple(tok(p).input_ids) for p in prompts]
        assert len(set(ids)) == len(prompts)
        assert all(len(tok(w, add_special_tokens=False).input_ids) == 1 for w in DIGIT_WORDS)
        assert max(len(i) for i in ids) <= pipe.tokenizer.model_max_length


@pytest.mark.parametrize("name", MINIATURE_MODELS)
def test_shipped_teacher_draws_the_prompted_digit(name):
    """200 digits at 8 steps through the pipeline (compressed text): the classifier reads the prompted digit."""
    from scfm.eval.metrics import DigitsEvaluator

    pipe = PIPELINES[name].from_pretrained(shipped_pipeline_path(name), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    labels = torch.arange(10).repeat_interleave(20)
    digits = pipeline_digits(pipe, labels, 8, generator=torch.Generator().manual_seed(0))
    assert DigitsEvaluator().evaluate(digits, labels).class_acc > 0.9
