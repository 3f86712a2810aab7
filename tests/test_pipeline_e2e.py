"""End to end on tiny random Flux and SD3 PIPELINES, through the CLI entry point:
generate-data -> distill from the cache -> export (diffusers, comfyui, fused) -> load_lora_weights -> sample."""

import gc
import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

import scfm  # noqa: E402
from scfm.commands.cli import main  # noqa: E402
from scfm.data.cache_store import META_FILE, SHARED_FILE, read_index  # noqa: E402
from scfm.fileio import load_safetensors  # noqa: E402
from scfm.models.adapters import get_adapter, load_pipeline  # noqa: E402
from scfm.models.flux import FluxAdapter  # noqa: E402
from scfm.models.sd3 import SD3Adapter  # noqa: E402
from scfm.models.tiny import LATENT_CHANNELS, build_tiny_flux_pipeline, build_tiny_sd3_pipeline  # noqa: E402
from scfm.pipelines.lora import load_lora
from scfm.pipelines.sampling import sample_pipeline  # noqa: E402
from scfm.train.run_folder import load_run  # noqa: E402
from scfm.train.yaml_config import load_config  # noqa: E402

pytestmark = pytest.mark.diffusers

ROOT = Path(__file__).resolve().parents[1]
ADAPTERS = {"flux": FluxAdapter, "sd3": SD3Adapter}
PROMPTS = ["a red cat", "a blue dog"]
BUCKETS = "32x32,48x32"  # WIDTHxHEIGHT pixels -> latents [4, 16, 16] and [4, 16, 24]
RANK, ALPHA = 2, 4.0  # alpha != rank: the LoRA scale 2 must survive every export


@pytest.fixture(scope="session")
def pipeline_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    return {"flux": build_tiny_flux_pipeline(root), "sd3": build_tiny_sd3_pipeline(root)}


def write_config(path: Path, model: Path, cache: Path, out: Path, family: str, **extra) -> Path:
    values = {
        "teacher": f"diffusers:{model}",
        "data": f"cache:{cache}",
        "output_dir": str(out),
        "max_steps": 3,
        "batch_size": 2,
        "lr": 1.0e-2,
        "lora.rank": RANK,
        "lora.alpha": ALPHA,
        "lora.targets": list(ADAPTERS[family].default_lora_targets),
        "plan.teacher_min": 4,
        "plan.teacher_max": 4,
        "log_every": 1,
        "logger": "jsonl",
        "local_files_only": True,
        "final_weights": "student",
        "grad_clip": 2.0 if family == "sd3" else 10.0,
        **extra,
    }
    path.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in values.items()) + "\n")
    return path


@pytest.fixture(scope="module", params=["flux", "sd3"])
def e2e(request, pipeline_dirs, tmp_path_factory):
    """The whole CLI path once per family; tests below inspect its outputs."""
    family, model = request.param, pipeline_dirs[request.param]
    root = tmp_path_factory.mktemp(f"e2e-{family}")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    cache, run = root / "cache", root / "run"
    assert (
        main(
            [
                "generate-data",
                "--model",
                str(model),
                "--prompts",
                str(root / "prompts.txt"),
                "--out",
                str(cache),
                "--steps",
                "2",
                "--buckets",
                BUCKETS,
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
    config = write_config(root / "config.yaml", model, cache, run, family)
    assert main(["distill", str(config)]) == 0
    for fmt, out in (
        ("diffusers", root / "lora.safetensors"),
        ("comfyui", root / "comfy.safetensors"),
        ("fused", root / "fused"),
    ):
        assert (
            main(
                [
                    "export",
                    "--run",
                    str(run),
                    "--format",
                    fmt,
                    "--out",
                    str(out),
                    "--weights",
                    "student",
                    "--dtype",
                    "fp32",
                ]
            )
            == 0
        )
    return SimpleNamespace(family=family, model=model, root=root, cache=cache, run=run, config=config)


def probe(family: str, b: int = 2, seed: int = 11):
    """Latents [b, C, 16, 24], times [b] and random cond for the tiny pipelines' widths."""
    g = torch.Generator().manual_seed(seed)
    x, t = torch.randn(b, LATENT_CHANNELS, 16, 24, generator=g), torch.rand(b, generator=g)
    if family == "flux":
        cond = {
            "prompt_embeds": torch.randn(b, 7, 32, generator=g),
            "pooled_prompt_embeds": torch.randn(b, 32, generator=g),
            "guidance": 7.5 * torch.rand(b, generator=g),
        }
    else:
        cond = {
            "prompt_embeds": torch.randn(b, 9, 64, generator=g),
            "pooled_prompt_embeds": torch.randn(b, 64, generator=g),
            "negative_prompt_embeds": torch.randn(1, 9, 64, generator=g),
            "negative_pooled_prompt_embeds": torch.randn(1, 64, generator=g),
        }
    return x, t, cond


# ----------------------------------------------------------------------------- the cache


def test_generate_data_writes_every_sample_once_with_cond_in_the_adapters_convention(e2e):
    entries, torn = read_index(e2e.cache)
    assert not torn and len(entries) == len(PROMPTS) * 2 and len({e["id"] for e in entries}) == len(entries)
    assert {e["bucket"] for e in entries} == {"32x32", "48x32"}
    meta = json.loads((e2e.cache / META_FILE).read_text())
    assert (meta["adapter"], meta["steps"], meta["guidance"], meta["dtype"]) == (e2e.family, 2, 3.5, "fp32")
    for entry in entries:
        shard = load_safetensors(e2e.cache / entry["shard"])
        w, h = map(int, entry["bucket"].split("x"))
        assert shard["x0"].shape[1:] == (LATENT_CHANNELS, h // 2, w // 2) and shard["x0"].dtype == torch.float32
        assert set(shard) == {"x0", "prompt_embeds", "pooled_prompt_embeds"}
    shared = e2e.cache / SHARED_FILE
    if e2e.family == "sd3":  # the empty-prompt embeddings, one row, stored once
        neg = load_safetensors(shared)
        assert neg["negative_prompt_embeds"].shape[0] == 1 and neg["negative_pooled_prompt_embeds"].shape == (1, 64)
    else:
        assert not shared.exists()


def test_cached_x0_decodes_to_the_pipelines_own_image_for_the_sample_seed(e2e):
    pipe, adapter_cls = load_pipeline(e2e.model, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    entry = next(e for e in read_index(e2e.cache)[0] if e["bucket"] == "48x32")
    x0 = load_safetensors(e2e.cache / entry["shard"])["x0"][entry["row"] : entry["row"] + 1]
    guidance = 3.5 if e2e.family == "flux" else 4.5  # SD3: scfm's w = 3.5 is the pipeline's guidance_scale 4.5
    image = pipe(
        entry["prompt"],
        height=32,
        width=48,
        num_inference_steps=2,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(entry["seed"]),
        output_type="pt",
    ).images
    torch.testing.assert_close(adapter_cls.decode_latents(pipe, x0), image, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- distillation


def test_distill_from_the_cache_never_builds_a_vae_or_text_encoder(e2e, tmp_path, monkeypatch):
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel

    from scfm.train.engine import Distiller

    forbidden = (AutoencoderKL, CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel)
    built, alive = [], []
    for cls in forbidden:
        original = cls.__init__

        def init(self, *args, _original=original, **kwargs):
            built.append(type(self).__name__)
            _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", init)
    step = Distiller.train_step

    def checked_step(self, batches):
        if not alive:
            gc.collect()
            with warnings.catch_warnings():  # isinstance on some module proxies warns
                warnings.simplefilter("ignore")
                alive.append(sorted({type(o).__name__ for o in gc.get_objects() if isinstance(o, forbidden)}))
        return step(self, batches)

    monkeypatch.setattr(Distiller, "train_step", checked_step)
    gc.collect()
    config = write_config(tmp_path / "c.yaml", e2e.model, e2e.cache, tmp_path / "run", e2e.family, max_steps=2)
    assert main(["distill", str(config)]) == 0
    assert built == [] and alive == [[]]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in records)


def test_distill_from_the_cache_resumes_exactly(e2e, tmp_path):
    """The cache source is checkpointed with the run (its generator), so a resumed run equals an uninterrupted one."""

    def run(name, steps, *extra):
        config = write_config(
            tmp_path / f"{name}-{steps}.yaml",
            e2e.model,
            e2e.cache,
            tmp_path / name,
            e2e.family,
            max_steps=steps,
            checkpoint_every=2,
        )
        assert main(["distill", str(config), *extra]) == 0

    run("full", 4)
    run("resumed", 2)
    run("resumed", 4, "--resume", "latest")
    full, resumed = (load_safetensors(tmp_path / name / "student.safetensors") for name in ("full", "resumed"))
    assert full.keys() == resumed.keys() and any(v.abs().max() > 0 for k, v in full.items() if "lora_B" in k)
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], atol=1e-6, rtol=1e-5)


def test_preset_precision_settings_run_on_the_tiny_model(e2e, tmp_path):
    """bf16 frozen weights, bf16 autocast and gradient checkpointing (the presets' settings) give finite steps."""
    config = write_config(
        tmp_path / "c.yaml",
        e2e.model,
        e2e.cache,
        tmp_path / "run",
        e2e.family,
        max_steps=2,
        model_dtype="bf16",
        mixed_precision="bf16",
        gradient_checkpointing=True,
    )
    assert main(["distill", str(config)]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(torch.isfinite(torch.tensor([r["loss"], r["grad_norm"]])).all() for r in records)


# ----------------------------------------------------------------------------- outputs


def test_exported_diffusers_lora_loads_with_no_missing_keys_and_reproduces_the_distilled_model(e2e):
    result, config = load_run(e2e.run, "student")
    pipe, adapter_cls = load_pipeline(e2e.model, local_files_only=True)
    modules = load_lora(pipe, e2e.root / "lora.safetensors")  # raises on missing / unexpected keys
    assert len(modules) == len(load_safetensors(e2e.root / "lora.safetensors")) // 2
    kwargs = {"guidance_scale": config.cfg_scale, "cfg_mode": config.cfg_mode} if e2e.family == "sd3" else {}
    x, t, cond = probe(e2e.family)
    with torch.no_grad():
        ref = result(x, t, **cond)
        got = adapter_cls(pipe.transformer, **kwargs)(x, t, **cond)
        plain = adapter_cls(load_pipeline(e2e.model, local_files_only=True)[0].transformer, **kwargs)(x, t, **cond)
    assert (ref - plain).abs().max() > 1e-3  # the LoRA changes the velocity
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_comfyui_export_carries_the_trained_alpha(e2e):
    sd = load_safetensors(e2e.root / "comfy.safetensors")
    alphas = [v for k, v in sd.items() if k.endswith(".alpha")]
    assert alphas and all(k.startswith("lora_transformer_") for k in sd) and all(a.item() == ALPHA for a in alphas)


def test_fused_transformer_reproduces_the_distilled_model(e2e):
    result, config = load_run(e2e.run, "student")
    adapter_cls = ADAPTERS[e2e.family]
    fused = adapter_cls.from_pretrained(
        e2e.root / "fused",
        subfolder=None,
        local_files_only=True,
        adapter_kwargs={"guidance_scale": config.cfg_scale} if e2e.family == "sd3" else None,
    )
    assert not any("lora" in n for n, _ in fused.named_parameters())
    x, t, cond = probe(e2e.family, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(fused(x, t, **cond), result(x, t, **cond), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_pipeline_sampling_is_scfm_euler_on_the_same_grid(e2e, shift):
    """The pipeline with the loaded LoRA, sampled by sample_pipeline, equals scfm.sample of the distilled
    model on the same noise: same grid (no second shift by the scheduler), same guidance convention."""
    result, _ = load_run(e2e.run, "student")
    pipe, adapter_cls = load_pipeline(e2e.model, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    load_lora(pipe, e2e.root / "lora.safetensors")
    got = sample_pipeline(
        pipe,
        ["a red cat"],
        2,
        shift=shift,
        generator=[torch.Generator().manual_seed(5)],
        height=32,
        width=48,
        output="latents",
    )
    cond = adapter_cls.encode_prompts(pipe, ["a red cat"], "cpu")
    if e2e.family == "flux":
        cond["guidance"] = torch.tensor([3.5])
    noise = torch.randn(1, LATENT_CHANNELS, 16, 24, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(
        got, scfm.sample(result, noise, steps=2, shift=shift, lora_scale=1.0, **cond), atol=1e-4, rtol=1e-4
    )
    scheduler = type(pipe.scheduler).__name__
    assert (
        scheduler == "FlowMatchEulerDiscreteScheduler" and pipe.scheduler.config.shift == 3.0
    )  # the user's scheduler is back


def test_sample_cli_writes_finite_images_of_the_requested_size(e2e, tmp_path):
    from PIL import Image

    assert (
        main(
            [
                "sample",
                "--run",
                str(e2e.run),
                "--weights",
                "student",
                "--prompt",
                "a red cat",
                "--prompt",
                "a blue dog",
                "--steps",
                "2",
                "--height",
                "32",
                "--width",
                "48",
                "--out",
                str(tmp_path / "s.png"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    for i in range(2):
        with Image.open(tmp_path / f"s_{i}.png") as im:
            assert im.size == (48, 32) and im.mode == "RGB"
    out = tmp_path / "lora.png"
    assert (
        main(
            [
                "sample",
                "--model",
                str(e2e.model),
                "--lora",
                str(e2e.root / "lora.safetensors"),
                "--prompt",
                "a cat",
                "--steps",
                "2",
                "--height",
                "32",
                "--width",
                "32",
                "--out",
                str(out),
                "--local-files-only",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    with Image.open(out) as im:
        assert im.size == (32, 32)


def test_load_lora_refuses_a_file_naming_modules_the_transformer_lacks(pipeline_dirs, tmp_path):
    from scfm.fileio import atomic_save_safetensors

    pipe, _ = load_pipeline(pipeline_dirs["flux"], local_files_only=True)
    path = atomic_save_safetensors(
        {
            "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(2, 32),
            "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(32, 2),
            "transformer.transformer_blocks.7.attn.to_q.lora_A.weight": torch.zeros(2, 32),
            "transformer.transformer_blocks.7.attn.to_q.lora_B.weight": torch.zeros(32, 2),
        },
        tmp_path / "wrong.safetensors",
    )
    with pytest.raises(
        ValueError, match="does not fit this pipeline's transformer.*unexpected keys.*transformer_blocks.7"
    ):
        load_lora(pipe, path)


def test_export_and_sample_refuse_a_missing_run_and_lora_in_one_line_with_status_2(tmp_path, capsys):
    out = str(tmp_path / "x.safetensors")
    assert main(["export", "--run", str(tmp_path), "--format", "diffusers", "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scfm export: error: ") and "finished scfm distill run" in err and err.count("\n") == 1
    assert main(["sample", "--model", "m", "--lora", str(tmp_path / "none.safetensors"), "--prompt", "a"]) == 2
    assert "--lora" in capsys.readouterr().err
    assert main(["sample", "--prompt", "a"]) == 2
    assert "exactly one of --run" in capsys.readouterr().err
    with pytest.raises(ValueError, match="exactly one of --run"):
        main(["sample", "--prompt", "a", "--debug"])  # --debug: the exception itself, for its traceback


# ----------------------------------------------------------------------------- presets


@pytest.mark.parametrize(
    "preset, family, model",
    [
        ("flux-dev", "flux", "black-forest-labs/FLUX.1-dev"),
        ("sd35-large", "sd3", "stabilityai/stable-diffusion-3.5-large"),
        ("wan-t2v-1.3b", "wan", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"),
    ],
)
def test_presets_validate_and_use_the_adapters_lora_targets(preset, family, model):
    config = load_config(ROOT / "configs" / f"{preset}.yaml")
    adapter = get_adapter(family)
    assert config.lora.targets == adapter.default_lora_targets
    assert config == scfm.DistillConfig.from_dict({**config.to_dict(), **adapter.recommended_config})
    assert (config.lora.rank, config.lora.alpha, config.lr, config.batch_size) == (64, 64.0, 2e-5, 8)
    plan = config.plan
    assert (plan.t_skip, plan.teacher_min, plan.teacher_max, plan.teacher_ratio) == (2, 32, 32, 0.4)
    assert (config.mixed_precision, config.model_dtype, config.gradient_checkpointing) == ("bf16", "bf16", True)
    assert (config.teacher, config.data) == (f"diffusers:{model}", f"cache:cache/{preset}")
    assert config.grad_clip == (10.0 if family == "flux" else 2.0)
    if family == "flux":
        assert (config.guidance_min, config.guidance_max) == (0.0, 7.5)
    else:  # true CFG: runtime, w = 3.5
        assert (config.cfg_mode, config.cfg_scale) == ("runtime", 3.5)


@pytest.mark.slow
def test_cache_memory_bench_runs_at_a_small_size(tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "cache_memory.json"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench/cache_memory.py"),
            "--t5-width",
            "256",
            "--t5-layers",
            "2",
            "--steps",
            "1",
            "--out",
            str(out),
            "--json",
        ],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    result = json.loads(out.read_text())
    assert [r["variant"] for r in result["rows"]] == [
        "python",
        "generate-data",
        "distill (cache)",
        "distill (full pipeline)",
    ]
    assert all(r["peak_rss_mb"] > 0 for r in result["rows"]) and result["component_mb"]["text_encoder_2"] > 1


def test_scfm_distill_on_a_cache_ends_with_a_calibration_table_that_scfm_sample_uses(e2e, tmp_path, capsys):
    table = json.loads((e2e.run / "calibration.json").read_text())
    saved = json.loads((e2e.run / "scfm_config.json").read_text())["lora_scales"]
    assert saved == table["scales"] and sorted(saved, key=int) == ["1", "2", "3", "4", "8"]
    assert all(0.0 <= float(v) <= 2.0 and f"{float(v):g}" in table["tried"][n] for n, v in saved.items())
    scale = float(saved["2"])
    common = ["sample", "--run", str(e2e.run), "--weights", "student", "--prompt", "a red cat", "--steps", "2"]
    common += ["--height", "32", "--width", "48", "--dtype", "fp32", "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "calibrated.png")]) == 0
    assert f"LoRA scale {scale:g} at 2 steps (the run's calibration)" in capsys.readouterr().out
    assert main([*common, "--lora-scale", str(scale), "--out", str(tmp_path / "given.png")]) == 0
    assert (tmp_path / "calibrated.png").read_bytes() == (tmp_path / "given.png").read_bytes()
    other = 1.0 if scale != 1.0 else 0.5
    assert main([*common, "--lora-scale", str(other), "--out", str(tmp_path / "other.png")]) == 0
    assert (tmp_path / "other.png").read_bytes() != (tmp_path / "calibrated.png").read_bytes()


def test_scfm_sample_uses_the_final_weights_by_default_and_no_table_for_another_copy(e2e, tmp_path, capsys):
    from scfm.train.run_folder import read_run_config

    final = read_run_config(e2e.run).final_weights
    other = next(w for w in ("student", "fast_ema", "slow_ema") if w != final)
    common = ["sample", "--run", str(e2e.run), "--prompt", "a red cat", "--steps", "2"]
    common += ["--height", "32", "--width", "48", "--dtype", "fp32", "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "default.png")]) == 0
    assert main([*common, "--weights", final, "--out", str(tmp_path / "final.png")]) == 0
    assert (tmp_path / "default.png").read_bytes() == (tmp_path / "final.png").read_bytes()
    capsys.readouterr()
    assert main([*common, "--weights", other, "--out", str(tmp_path / "other.png")]) == 0
    out = capsys.readouterr().out
    assert f"calibrated for its final weights ({final})" in out and "LoRA scale 1 at 2 steps (default)" in out


def test_exported_files_say_how_to_use_them_and_scfm_sample_reads_it(e2e, tmp_path, capsys):
    from safetensors import safe_open

    from scfm.models.adapters import adapter_class_for
    from scfm.train.run_folder import read_run_config

    config = read_run_config(e2e.run)
    adapter_cls = adapter_class_for(e2e.model, local_files_only=True)
    saved = json.loads((e2e.run / "scfm_config.json").read_text())["lora_scales"]
    files = {fmt: tmp_path / f"{fmt}.safetensors" for fmt in ("diffusers", "comfyui")}
    for fmt, path in files.items():
        assert main(["export", "--run", str(e2e.run), "--format", fmt, "--out", str(path)]) == 0
    metas = {}
    for fmt, path in files.items():
        with safe_open(str(path), framework="pt") as handle:
            metas[fmt] = handle.metadata()
            lora_keys = [k for k in handle.keys() if not k.endswith(".alpha")]
            assert {handle.get_tensor(k).dtype for k in lora_keys} == {torch.bfloat16}  # the default export dtype
    for meta in metas.values():
        assert meta["format"] == "pt" and meta["modelspec.sai_model_spec"] == "1.0.0"
        assert meta["modelspec.architecture"].endswith("/lora") and meta["modelspec.date"]
        assert json.loads(meta["scfm.lora_scales"]) == {n: float(k) for n, k in saved.items()}
        assert float(meta["scfm.shift"]) == adapter_cls.default_shift
        assert meta["scfm.final_weights"] == config.final_weights and meta["ss_network_dim"] == str(config.lora.rank)
        assert "Euler" in meta["modelspec.usage_hint"] and ("scfm.cfg_mode" in meta) == adapter_cls.true_cfg
    assert float(metas["diffusers"]["ss_network_alpha"]) == config.lora.rank  # alpha / rank baked into lora_B
    assert float(metas["comfyui"]["ss_network_alpha"]) == config.lora.alpha
    fused = sorted((e2e.root / "fused").glob("*.safetensors"))
    assert fused
    for path in fused:  # the fused transformer's files say how to sample it too
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata()
        assert meta["scfm.merged_lora_strength"] == "1" and meta[
            "modelspec.architecture"
        ] == adapter_cls.modelspec_architecture(json.loads((e2e.root / "fused" / "config.json").read_text()))
        assert float(meta["scfm.shift"]) == adapter_cls.default_shift and "ss_network_dim" not in meta
    files["diffusers"] = tmp_path / "fp32.safetensors"  # scfm sample --run exports in float32: compare like with like
    assert (
        main(
            ["export", "--run", str(e2e.run), "--format", "diffusers", "--out", str(files["diffusers"])]
            + ["--dtype", "fp32"]
        )
        == 0
    )
    common = ["sample", "--prompt", "a red cat", "--steps", "2", "--height", "32", "--width", "48"]
    common += ["--dtype", "fp32", "--device", "cpu"]
    capsys.readouterr()
    lora = ["--model", str(e2e.model), "--lora", str(files["diffusers"]), "--local-files-only"]
    assert main([*common, *lora, "--out", str(tmp_path / "file.png")]) == 0
    assert f"LoRA scale {float(saved['2']):g} at 2 steps (the file's calibration)" in capsys.readouterr().out
    assert main([*common, "--run", str(e2e.run), "--out", str(tmp_path / "run.png")]) == 0
    assert (tmp_path / "file.png").read_bytes() == (tmp_path / "run.png").read_bytes()


# ----------------------------------------------------------------------------- model cards


def _read_card(path: Path):
    from huggingface_hub import ModelCard

    return ModelCard.load(path)


def test_diffusers_export_writes_a_model_card_whose_snippet_reproduces_scfm_sampling(e2e, tmp_path, monkeypatch):
    from PIL import Image

    from scfm.model_card import CARD_MARK

    export = tmp_path / "export"
    assert main(["export", "--run", str(e2e.run), "--format", "diffusers", "--out", str(export)]) == 0
    card = _read_card(export / "README.md")
    adapter_cls = ADAPTERS[e2e.family]
    assert card.data.library_name == "diffusers" and card.data.pipeline_tag == adapter_cls.pipeline_tag
    assert {"lora", "scfm", "few-step"} <= set(card.data.tags) and "base_model" not in card.data.to_dict()  # local
    text = (export / "README.md").read_text()
    assert CARD_MARK in text and "| LoRA strength |" in text and "KSampler scheduler | simple" in text
    assert "From the run's calibration" in text  # no eval given: the calibration's table
    saved = {int(n): float(k) for n, k in json.loads((e2e.run / "scfm_config.json").read_text())["lora_scales"].items()}
    snippet = text.split("```python\n", 1)[1].split("```", 1)[0]
    settings = f"steps, shift, lora_strength = 4, {adapter_cls.default_shift:g}, {saved[4]:g}\n"
    assert settings in snippet
    # the tiny run's teacher_max is 4, so its 4-step strength is 0 (the teacher): run the snippet at 2 steps
    snippet = snippet.replace(settings, f"steps, shift, lora_strength = 2, {adapter_cls.default_shift:g}, {saved[2]}\n")
    assert saved[2] > 0
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "README.md snippet", "exec"), {})  # runs as written against the tiny pipeline
    with Image.open(tmp_path / "scfm.png") as im:
        got = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32).copy()).reshape(-1, 3)
    pipe, _ = load_pipeline(e2e.model, local_files_only=True)
    load_lora(pipe, export / "pytorch_lora_weights.safetensors")
    prompt = snippet.split("pipe(\n    ", 1)[1].split(",\n", 1)[0]
    config = load_config(e2e.config)
    guidance = config.cfg_scale if adapter_cls.true_cfg else adapter_cls.default_guidance
    want = sample_pipeline(
        pipe, [eval(prompt)], 2, saved[2], generator=torch.Generator().manual_seed(0), guidance=guidance
    )
    want = (want[0].permute(1, 2, 0).reshape(-1, 3) * 255).round()
    assert got.shape == want.shape and (got - want).abs().max() <= 2


def test_every_run_folder_gets_a_card_and_a_users_readme_is_never_replaced(e2e, tmp_path, capsys):
    card = _read_card(e2e.run / "README.md")
    assert card.data.library_name == "diffusers" and "scfm export --run" in card.text
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("my notes\n")
    capsys.readouterr()
    assert main(["export", "--run", str(e2e.run), "--format", "diffusers", "--out", str(mine), "--force"]) == 2
    assert "is not an scfm model card" in capsys.readouterr().err
    assert (mine / "README.md").read_text() == "my notes\n" and not (mine / "pytorch_lora_weights.safetensors").exists()
    again = tmp_path / "again"
    assert main(["export", "--run", str(e2e.run), "--format", "diffusers", "--out", str(again)]) == 0
    assert main(["export", "--run", str(e2e.run), "--format", "diffusers", "--out", str(again)]) == 2  # no --force
    assert main(["export", "--run", str(e2e.run), "--format", "diffusers", "--out", str(again), "--force"]) == 0


def test_diffusers_reads_the_lora_adapter_metadata(e2e, tmp_path):
    from diffusers.utils.state_dict_utils import _load_sft_state_dict_metadata
    from peft import LoraConfig

    path = tmp_path / "lora.safetensors"
    assert main(["export", "--run", str(e2e.run), "--format", "diffusers", "--out", str(path)]) == 0
    meta = _load_sft_state_dict_metadata(str(path))
    config = LoraConfig(**{k.removeprefix("transformer."): v for k, v in meta.items()})
    names = {k.removeprefix("transformer.").rsplit(".lora_", 1)[0] for k in load_safetensors(path)}
    assert config.r == RANK and config.lora_alpha == RANK and set(config.target_modules) == names
    pipe, _ = load_pipeline(e2e.model, local_files_only=True)
    assert len(load_lora(pipe, path)) == len(names)  # diffusers builds the adapter from the metadata
