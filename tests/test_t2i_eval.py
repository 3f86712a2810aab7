"""Text-to-image evaluation (scfm.eval.t2i): CLIP score, FID / dFID via torchmetrics, the driver, `scfm eval`.

A tiny random CLIP (built from local configs, a byte-level tokenizer written to disk and a
PIL image processor) stands in for openai/clip-vit-large-patch14, and small feature modules
stand in for Inception; nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("torchmetrics")
pytest.importorskip("transformers")

from scfm.eval import t2i, t2i_metrics  # noqa: E402
from scfm.eval.metrics import frechet_distance  # noqa: E402

pytestmark = pytest.mark.diffusers

PROMPTS = ["a red cube", "a blue sphere on grass", "two cats", "a city at night", "an old boat"]


def build_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """Save a random tiny ``CLIPModel`` with its ``CLIPProcessor`` (32 px images, byte-level BPE) to ``folder``."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer

    from scfm.models.tiny import write_tiny_clip_tokenizer

    tokenizer = CLIPTokenizer.from_pretrained(write_tiny_clip_tokenizer(folder.parent / f"{folder.name}_tokenizer"))
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="module")
def scorer(clip_dir) -> t2i.ClipScorer:
    return t2i.ClipScorer(clip_dir)


class ColorStats(nn.Module):
    """Per-channel mean, std and 2x2 pooled means: images [B, 3, H, W] in [0, 1] -> [B, 18]."""

    num_features = 18

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)
        return torch.cat([x.mean((2, 3)), x.std((2, 3)), pooled], dim=1)


def build_color_stats() -> nn.Module:
    """Factory for ``--fid-features tests/test_t2i_eval.py:build_color_stats``."""
    return ColorStats()


def images(n: int, seed: int, h: int = 24, w: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def fake_generate(shift: float = 0.0, calls: list | None = None):
    """generate(prompts, steps, seed): seeded noise images, darkened by ``shift / steps``; records calls."""

    def generate(prompts, steps, seed):
        if calls is not None:
            calls.append((tuple(prompts), steps, seed))
        x = images(len(prompts), seed)
        return (x - shift / steps).clamp(0, 1)

    return generate


def must_not_generate(prompts, steps, seed):
    raise AssertionError("generate was called although the setup is invalid")


# --------------------------------------------------------------------------------------- CLIP
def test_clip_score_is_finite_deterministic_and_reloads_identically(clip_dir, scorer):
    x = images(3, seed=0)
    a = t2i.clip_score(x, PROMPTS[:3], scorer)
    assert np.isfinite(a) and 0.0 <= a <= 100.0
    assert t2i.clip_score(x, PROMPTS[:3], scorer) == a
    assert t2i.clip_score(x, PROMPTS[:3], str(clip_dir)) == pytest.approx(a, abs=1e-5)  # a fresh load


@pytest.mark.filterwarnings("error:Encountered caption longer")
def test_clip_score_equals_100_cos_of_clip_embeddings_of_the_png_quantised_images(clip_dir, scorer):
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    x, prompts = images(4, seed=3), [*PROMPTS[:3], "a very long prompt " * 8]  # > 77 tokens: cut, keeping the end token
    with torch.no_grad():
        pixels = processor(images=list(t2i.to_uint8(x)), return_tensors="pt")["pixel_values"]
        img = model.get_image_features(pixel_values=pixels)
        tok = processor(text=prompts, return_tensors="pt", padding=True, truncation=True, max_length=77)
        assert tok["input_ids"].shape[1] == 77 and tok["input_ids"][3, -1] == 1
        txt = model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
    img, txt = (o if isinstance(o, torch.Tensor) else o.pooler_output for o in (img, txt))
    expected = float((100 * nn.functional.cosine_similarity(img, txt)).mean().clamp(min=0))
    assert t2i.clip_score(x, prompts, scorer) == pytest.approx(expected, abs=1e-3)


def test_clip_score_accumulates_over_batches_like_one_batch(scorer):
    x = images(4, seed=5)
    whole = t2i.clip_score(x, PROMPTS[:4], scorer)
    scorer.reset()
    scorer.update(x[:1], PROMPTS[:1])
    scorer.update(x[1:], PROMPTS[1:4])
    assert scorer.compute() == pytest.approx(whole, abs=1e-4)


def test_missing_clip_folder_says_how_to_provide_one(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--clip .*save_pretrained.*clip-vit-large-patch14.*HF_HUB_OFFLINE"):
        t2i.ClipScorer(tmp_path / "no-such-clip")


def test_a_folder_that_is_not_a_clip_model_is_refused(tmp_path):
    from transformers import CLIPTextConfig

    CLIPTextConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1).save_pretrained(
        tmp_path
    )
    with pytest.raises(ValueError, match=r"'clip_text_model' model, not a CLIP model.*--clip PATH"):
        t2i.load_clip(tmp_path)


def test_a_clip_folder_without_processor_says_to_save_it(clip_dir, tmp_path):
    from transformers import CLIPModel

    CLIPModel.from_pretrained(clip_dir).save_pretrained(tmp_path / "model-only")
    with pytest.raises(ValueError, match=r"no usable CLIP processor.*CLIPProcessor.from_pretrained"):
        t2i.load_clip(tmp_path / "model-only")


def test_an_unreachable_hub_id_says_how_to_provide_the_model():
    with pytest.raises(OSError, match=r"(?s)hub id 'scfm-test/no-such-clip'.*--clip PATH"):
        t2i.load_clip("scfm-test/no-such-clip", local_files_only=True)


# ---------------------------------------------------------------------------------------- FID
def test_fid_of_a_set_against_itself_is_zero_and_a_shifted_set_scores_higher():
    a = images(40, seed=1)
    same = t2i.frechet_distance_images(a, a, ColorStats())
    shifted = t2i.frechet_distance_images(a, (a * 0.7 + 0.2), ColorStats())
    assert abs(same) < 1e-6
    assert shifted > 0.05 and shifted > 1e4 * abs(same)


def test_fid_matches_the_projects_float64_frechet_distance_on_the_same_features():
    a, b = images(60, seed=1), images(50, seed=2) ** 1.5
    with torch.no_grad():
        expected = frechet_distance(ColorStats()(a), ColorStats()(b), eps=0.0)
    assert t2i.frechet_distance_images(a, b, ColorStats(), batch_size=16) == pytest.approx(expected, rel=1e-4)


def test_fid_warns_when_samples_are_fewer_than_feature_dims():
    with pytest.warns(UserWarning, match=r"n=6 samples < feature dim 18"):
        t2i.frechet_distance_images(images(6, seed=1), images(8, seed=2), ColorStats())


def test_fid_needs_two_samples_per_set():
    with pytest.raises(ValueError, match="at least 2"):
        t2i.frechet_distance_images(images(1, seed=1), images(4, seed=2), ColorStats())


def test_missing_torch_fidelity_says_pip_install_and_inception_weights(monkeypatch):
    monkeypatch.setattr(t2i_metrics, "has_torch_fidelity", lambda: False)
    with pytest.raises(ImportError, match=r"pip install torch-fidelity.*--inception-weights PATH.*--fid-features"):
        t2i.load_inception()


def test_missing_inception_weights_file_is_named_with_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(t2i_metrics, "has_torch_fidelity", lambda: True)
    with pytest.raises(FileNotFoundError, match=r"--inception-weights .*pt_inception-2015-12-05"):
        t2i.load_inception(tmp_path / "pt_inception-2015-12-05-6726825d.pth")


def test_fid_features_from_a_file_and_function_spec():
    features = t2i.resolve_fid_features(f"{Path(__file__)}:build_color_stats")
    assert isinstance(features.module, nn.Module) and features.dim == 18 and features.input == "float"
    with pytest.raises(ValueError, match=r"cannot be loaded"):
        t2i.resolve_fid_features(f"{Path(__file__)}:no_such_function")


# ------------------------------------------------------------------------ prompts, reference
def test_prompt_files_txt_and_jsonl(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n\n  a dog  \n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "a cat"}\n{"caption": "a dog"}\n')
    assert t2i.load_prompts(tmp_path / "p.txt") == ["a cat", "a dog"]
    assert t2i.load_prompts(tmp_path / "p.jsonl", limit=1) == ["a cat"]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{"label": 3}\n')
    with pytest.raises(
        ValueError, match=r'bad.jsonl:2: needs a non-empty string field "prompt" \(or "caption" / "text"\)'
    ):
        t2i.load_prompts(tmp_path / "bad.jsonl")


def write_reference(folder: Path, n: int = 5, seed: int = 0) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        arr = (rng.random((30 + 4 * i, 40, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / (f"{i}.png" if i % 2 else f"{i}.jpg"))
    return folder


def test_reference_folder_loads_resized_center_cropped_images_in_unit_range(tmp_path):
    ref = t2i.load_reference_folder(write_reference(tmp_path / "ref"), (24, 32))
    assert ref.shape == (5, 3, 24, 32) and ref.dtype == torch.float32
    assert 0.0 <= float(ref.min()) and float(ref.max()) <= 1.0
    (tmp_path / "ref" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"broken.png' cannot be read"):
        t2i.load_reference_folder(tmp_path / "ref", 16)


def test_reference_folder_with_one_image_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"holds 1 .png/.jpg image.*at least 2"):
        t2i.list_reference_images(write_reference(tmp_path / "ref", n=1))


# ------------------------------------------------------------------------------------- driver
def test_driver_refuses_a_missing_clip_before_generating(tmp_path):
    with pytest.raises(FileNotFoundError, match="--clip"):
        t2i.evaluate_text_to_image(
            must_not_generate, must_not_generate, PROMPTS, [1, 2], tmp_path, clip=tmp_path / "nope", fid_features=None
        )
    assert not (tmp_path / "t2i_metrics.json").exists()


def test_driver_refuses_fid_without_torch_fidelity_before_generating(tmp_path, scorer, monkeypatch):
    monkeypatch.setattr(t2i_metrics, "has_torch_fidelity", lambda: False)
    with pytest.raises(ImportError, match="pip install torch-fidelity"):
        t2i.evaluate_text_to_image(
            must_not_generate, must_not_generate, PROMPTS, [1], tmp_path, clip=scorer, fid_features="inception"
        )


def test_driver_refuses_a_bad_reference_folder_or_single_prompt_before_generating(tmp_path, scorer):
    with pytest.raises(FileNotFoundError, match="--reference"):
        t2i.evaluate_text_to_image(
            must_not_generate,
            must_not_generate,
            PROMPTS,
            [1],
            tmp_path,
            clip=scorer,
            fid_features=ColorStats(),
            reference=tmp_path / "nope",
        )
    with pytest.raises(ValueError, match="at least 2 prompts"):
        t2i.evaluate_text_to_image(
            must_not_generate, must_not_generate, PROMPTS[:1], [1], tmp_path, clip=scorer, fid_features=ColorStats()
        )


@pytest.mark.filterwarnings("ignore:.*feature dim")
def test_driver_writes_metrics_json_grids_and_plot_with_the_documented_schema(tmp_path, scorer):
    teacher_calls, student_calls = [], []
    out = tmp_path / "eval"
    result = t2i.evaluate_text_to_image(
        fake_generate(0.0, teacher_calls),
        fake_generate(0.3, student_calls),
        PROMPTS,
        [1, 2],
        out,
        teacher_steps=8,
        clip=scorer,
        fid_features=ColorStats(),
        reference=write_reference(tmp_path / "ref"),
        batch_size=2,
        seed=7,
        grid_prompts=3,
        student_nfe_per_step=2,
        progress=False,
    )
    saved = json.loads((out / "t2i_metrics.json").read_text())
    assert saved["rows"] == result["rows"] and saved["complete"] is True
    keys = {"model", "steps", "nfe", "clip", "dfid", "fid", "n", "sec_per_image"}
    assert all(set(r) == keys for r in saved["rows"])
    assert [(r["model"], r["steps"], r["nfe"]) for r in saved["rows"]] == [
        ("teacher", 8, 8),
        ("teacher", 1, 1),
        ("student", 1, 2),
        ("teacher", 2, 2),
        ("student", 2, 4),
    ]
    assert all(r["n"] == len(PROMPTS) and np.isfinite(r["clip"]) and np.isfinite(r["fid"]) for r in saved["rows"])
    ref, *rest = saved["rows"]
    assert ref["dfid"] is None
    by = {(r["model"], r["steps"]): r for r in rest}
    # the fake teacher ignores the step count: its n-step samples equal the reference ones
    assert by["teacher", 1]["dfid"] == pytest.approx(0.0, abs=1e-5)
    assert by["student", 1]["dfid"] > by["student", 2]["dfid"] > 1e-3
    # same seeds for teacher and student; the batch starting at prompt i gets seed + i
    assert {c[2] for c in teacher_calls} == {c[2] for c in student_calls} == {7, 9, 11}
    assert saved["config"]["fid_features"] == "ColorStats" and saved["config"]["n_reference"] == 5
    assert any("n=5 samples < feature dim 18" in w for w in saved["warnings"])
    from PIL import Image

    for name in ["t2i_grid_steps1.png", "t2i_grid_steps2.png", "t2i_metrics_vs_steps.png"]:
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.width > 50
    assert saved["files"] == {
        "grids": {"1": "t2i_grid_steps1.png", "2": "t2i_grid_steps2.png"},
        "plot": "t2i_metrics_vs_steps.png",
    }
    assert not list(out.glob(".*.tmp"))


@pytest.mark.filterwarnings("ignore:.*feature dim")
def test_an_interrupted_driver_run_keeps_the_rows_it_finished(tmp_path, scorer):
    def student(prompts, steps, seed):
        if steps == 2:
            raise KeyboardInterrupt
        return images(len(prompts), seed)

    with pytest.raises(KeyboardInterrupt):
        t2i.evaluate_text_to_image(
            fake_generate(),
            student,
            PROMPTS[:3],
            [1, 2],
            tmp_path,
            teacher_steps=4,
            clip=scorer,
            fid_features=ColorStats(),
            batch_size=3,
            progress=False,
        )
    saved = json.loads((tmp_path / "t2i_metrics.json").read_text())
    assert saved["complete"] is False
    assert [(r["model"], r["steps"]) for r in saved["rows"]] == [
        ("teacher", 4),
        ("teacher", 1),
        ("student", 1),
        ("teacher", 2),
    ]


@pytest.mark.filterwarnings("ignore:.*feature dim")
def test_driver_with_clip_features_and_no_reference_fills_fid_with_none(tmp_path, scorer):
    result = t2i.evaluate_text_to_image(
        fake_generate(0.0),
        fake_generate(0.2),
        PROMPTS[:3],
        [1],
        tmp_path,
        teacher_steps=4,
        clip=scorer,
        fid_features="clip",
        batch_size=3,
        teacher_baseline=False,
        grid_prompts=0,
        progress=False,
    )
    assert [r["model"] for r in result["rows"]] == ["teacher", "student"]
    assert all(r["fid"] is None for r in result["rows"]) and result["rows"][1]["dfid"] > 0
    assert result["config"]["fid_features"].startswith("clip:") and result["config"]["fid_feature_dim"] == 16
    assert result["files"]["grids"] == {}


# ------------------------------------------------------------------------------ scfm eval (CLI)
def tiny_flux_with_lora(root: Path) -> tuple[Path, Path]:
    """A saved tiny Flux pipeline and a diffusers-format LoRA for its transformer (random, non-zero B)."""
    from diffusers import FluxTransformer2DModel

    from scfm.export import export_diffusers_lora
    from scfm.models.flux import FluxAdapter
    from scfm.models.tiny import build_tiny_flux_pipeline
    from scfm.weights.lora import LoraSpec, attach_lora, lora_named_parameters

    flux_dir = build_tiny_flux_pipeline(root)
    adapter = FluxAdapter(FluxTransformer2DModel.from_pretrained(flux_dir, subfolder="transformer"))
    attach_lora(adapter, LoraSpec(targets=FluxAdapter.default_lora_targets, rank=2, alpha=2.0))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _name, p in lora_named_parameters(adapter):
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return flux_dir, export_diffusers_lora(adapter, root / "lora.safetensors")


@pytest.fixture(scope="module")
def flux_and_lora(tmp_path_factory) -> tuple[Path, Path]:
    return tiny_flux_with_lora(tmp_path_factory.mktemp("flux"))


def eval_args(flux_dir, lora, prompts, clip_dir, out, *extra):
    return [
        "eval",
        "--debug",
        "--model",
        str(flux_dir),
        "--lora",
        str(lora),
        "--prompts",
        str(prompts),
        "--steps",
        "1",
        "2",
        "--teacher-steps",
        "4",
        "--clip",
        str(clip_dir),
        "--fid-features",
        f"{Path(__file__)}:build_color_stats",
        "--height",
        "32",
        "--width",
        "32",
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--no-progress",
        "--local-files-only",
        "--out",
        str(out),
        *extra,
    ]


@pytest.mark.filterwarnings("ignore:.*feature dim")
def test_scfm_eval_on_a_tiny_flux_pipeline_writes_metrics_grids_and_plot(flux_and_lora, clip_dir, tmp_path, capsys):
    from scfm.commands.cli import main

    flux_dir, lora = flux_and_lora
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS[:3]) + "\n")
    out = tmp_path / "eval"
    assert (
        main(
            eval_args(
                flux_dir,
                lora,
                tmp_path / "prompts.txt",
                clip_dir,
                out,
                "--reference",
                str(write_reference(tmp_path / "ref")),
            )
        )
        == 0
    )
    saved = json.loads((out / "t2i_metrics.json").read_text())
    assert [(r["model"], r["steps"]) for r in saved["rows"]] == [
        ("teacher", 4),
        ("teacher", 1),
        ("student", 1),
        ("teacher", 2),
        ("student", 2),
    ]
    for r in saved["rows"]:
        assert r["n"] == 3 and 0 <= r["clip"] <= 100 and r["fid"] >= 0 and (r["dfid"] is None) == (r["steps"] == 4)
    assert saved["config"]["image_size"] == [32, 32] and saved["config"]["lora"] == str(lora)
    student_1 = next(r for r in saved["rows"] if r["model"] == "student" and r["steps"] == 1)
    assert student_1["dfid"] > 0  # the random LoRA changes the samples
    assert (
        (out / "t2i_grid_steps1.png").is_file()
        and (out / "t2i_grid_steps2.png").is_file()
        and (out / "t2i_metrics_vs_steps.png").is_file()
    )
    assert "student" in capsys.readouterr().out


def test_scfm_eval_checks_clip_lora_and_run_before_loading_the_pipeline(flux_and_lora, tmp_path, monkeypatch):
    import scfm.models.adapters as adapters
    from scfm.commands.cli import main

    def no_load(*a, **k):
        raise AssertionError("the pipeline was loaded although --clip is missing")

    monkeypatch.setattr(adapters, "load_pipeline", no_load)
    flux_dir, lora = flux_and_lora
    (tmp_path / "prompts.txt").write_text("a\nb\n")
    with pytest.raises(FileNotFoundError, match="--clip"):
        main(eval_args(flux_dir, lora, tmp_path / "prompts.txt", tmp_path / "no-clip", tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="--lora"):
        main(
            eval_args(
                flux_dir, tmp_path / "no.safetensors", tmp_path / "prompts.txt", tmp_path / "no-clip", tmp_path / "out"
            )
        )
    run_args = [
        "eval",
        "--debug",
        "--run",
        str(tmp_path / "not-a-run"),
        "--prompts",
        str(tmp_path / "prompts.txt"),
        "--out",
        str(tmp_path / "out"),
    ]
    with pytest.raises(FileNotFoundError, match="finished scfm distill run"):
        main(run_args)


def test_eval_teacher_is_the_base_pipeline_and_student_the_lora_with_per_prompt_seeds(flux_and_lora):
    import argparse

    from scfm.commands.eval import make_generators
    from scfm.models.adapters import load_pipeline
    from scfm.pipelines.lora import load_lora
    from scfm.pipelines.sampling import sample_pipeline

    flux_dir, lora = flux_and_lora
    base, _ = load_pipeline(flux_dir, local_files_only=True)
    pipe, _ = load_pipeline(flux_dir, local_files_only=True)
    load_lora(pipe, lora)
    for p in (base, pipe):
        p.set_progress_bar_config(disable=True)
    args = argparse.Namespace(
        guidance=None,
        teacher_guidance=None,
        shift=1.0,
        teacher_shift=None,
        lora_scale=1.0,
        teacher_sampler="pipeline",
        height=32,
        width=32,
    )
    teacher, student, teacher_nfe, student_nfe = make_generators(pipe, args)
    assert (teacher_nfe, student_nfe) == (1, 1)
    prompts = PROMPTS[:2]
    gens = [torch.Generator().manual_seed(5 + j) for j in range(2)]
    plain = base(
        prompt=prompts, height=32, width=32, num_inference_steps=2, guidance_scale=3.5, generator=gens, output_type="pt"
    ).images
    torch.testing.assert_close(teacher(prompts, 2, 5), plain.float())
    # prompt j of a batch called with seed s uses seed s + j: batches of 1 give the same images
    torch.testing.assert_close(teacher(prompts[1:], 2, 6), plain[1:].float())
    gens = [torch.Generator().manual_seed(5 + j) for j in range(2)]
    lora_images = sample_pipeline(pipe, prompts, 2, lora_scale=1.0, shift=1.0, generator=gens, height=32, width=32)
    torch.testing.assert_close(student(prompts, 2, 5), lora_images)
    assert (
        lora_images
        - sample_pipeline(
            base, prompts, 2, generator=[torch.Generator().manual_seed(5 + j) for j in range(2)], height=32, width=32
        )
    ).abs().max() > 1e-3
    args.teacher_sampler = "euler"
    teacher_euler = make_generators(pipe, args)[0]
    torch.testing.assert_close(
        teacher_euler(prompts, 2, 5),
        sample_pipeline(
            base,
            prompts,
            2,
            shift=1.0,
            generator=[torch.Generator().manual_seed(5 + j) for j in range(2)],
            height=32,
            width=32,
        ),
    )
