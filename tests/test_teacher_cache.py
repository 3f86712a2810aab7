"""The teacher cache: input validation, deterministic ids/seeds, resuming after interruptions and
crashes, the image-folder mode, and the batch source distillation reads it with."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from scfm.commands.cli import main
from scfm.data import cache_inputs, cache_store, cache_writer
from scfm.data.cache_batches import CacheBatches
from scfm.data.cache_inputs import Bucket, parse_buckets, plan_prompt_samples, read_prompts
from scfm.fileio import load_safetensors
from scfm.models.tiny import build_tiny_flux_pipeline, build_tiny_sd3_pipeline
from scfm.train.config import DistillConfig

# ----------------------------------------------------------------------------- inputs (no model)


def test_buckets_parse_as_width_x_height_and_reject_garbage():
    assert parse_buckets("512x512, 768x512,512X512") == (Bucket(512, 512), Bucket(768, 512))
    assert Bucket(768, 512).name == "768x512"
    for bad in ("512", "512x", "ax512", "0x512", ""):
        with pytest.raises(ValueError, match="WIDTHxHEIGHT|empty"):
            parse_buckets(bad)


def test_bucket_sides_must_be_multiples_of_the_model_pixel_multiple():
    cache_inputs.check_buckets(parse_buckets("512x768"), 16, "m")
    with pytest.raises(ValueError, match=r"bucket 500x512: m needs width and height divisible by 16.*use e.g. 496x512"):
        cache_inputs.check_buckets(parse_buckets("500x512"), 16, "m")


def test_prompt_files_txt_and_jsonl(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n\n  a dog  \n")
    assert [(e.text, e.seed, e.line) for e in read_prompts(tmp_path / "p.txt")] == [
        ("a cat", None, 1),
        ("a dog", None, 3),
    ]
    (tmp_path / "p.jsonl").write_text('{"prompt": "a cat", "seed": 7}\n{"prompt": "a dog"}\n')
    assert [(e.text, e.seed) for e in read_prompts(tmp_path / "p.jsonl")] == [("a cat", 7), ("a dog", None)]


def test_prompt_file_errors_name_the_file_and_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="prompt file .*missing.txt.* does not exist"):
        read_prompts(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match="holds no prompt"):
        read_prompts(tmp_path / "empty.txt")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"prompt": "a cat"\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        read_prompts(tmp_path / "bad.jsonl")
    (tmp_path / "noprompt.jsonl").write_text('{"text": "a cat"}\n')
    with pytest.raises(ValueError, match=r"noprompt.jsonl:1: needs a non-empty string field \"prompt\""):
        read_prompts(tmp_path / "noprompt.jsonl")
    (tmp_path / "seed.jsonl").write_text('{"prompt": "a", "seed": -1}\n')
    with pytest.raises(ValueError, match=r"seed.jsonl:1: \"seed\" must be a non-negative integer"):
        read_prompts(tmp_path / "seed.jsonl")


def test_sample_ids_and_seeds_are_a_pure_function_of_prompt_index_bucket_and_repeat(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"prompt": "a cat"}\n{"prompt": "a dog", "seed": 40}\n')
    prompts = read_prompts(tmp_path / "p.jsonl")
    buckets = parse_buckets("32x32,48x32")
    specs = plan_prompt_samples(prompts, buckets, per_prompt=2, seed=0)
    assert specs == plan_prompt_samples(prompts, buckets, per_prompt=2, seed=0)
    assert len(specs) == 8 and len({s.id for s in specs}) == 8
    assert specs[0].id == "p000000_32x32_r00" and specs[3].id == "p000001_32x32_r01"
    assert [s.seed for s in specs if s.prompt == "a dog"] == [40, 41, 40, 41]  # the jsonl seed, + repeat
    derived = [s.seed for s in specs if s.prompt == "a cat"]
    assert len(set(derived)) == 4 and derived != [
        s.seed for s in plan_prompt_samples(prompts, buckets, 2, seed=1) if s.prompt == "a cat"
    ]


def test_nearest_bucket_by_aspect_ratio():
    buckets = parse_buckets("512x512,768x512,512x768")
    assert cache_inputs.nearest_bucket(1000, 640, buckets) == Bucket(768, 512)
    assert cache_inputs.nearest_bucket(300, 310, buckets) == Bucket(512, 512)
    assert cache_inputs.nearest_bucket(400, 900, buckets) == Bucket(512, 768)


def test_distill_config_pairs_diffusers_teachers_with_caches():
    ok = DistillConfig(teacher="diffusers:some/model", data="cache:c").validate()
    assert ok.cfg_mode == "runtime" and ok.model_dtype == "fp32"
    with pytest.raises(ValueError, match="set data: cache:<dir>"):
        DistillConfig(teacher="diffusers:some/model").validate()
    with pytest.raises(ValueError, match="set teacher: diffusers:"):
        DistillConfig(data="cache:c").validate()
    with pytest.raises(ValueError, match="names no model"):
        DistillConfig(teacher="diffusers: ", data="cache:c").validate()
    # validation images work for diffusers teachers (the cache's validation prompts are checked in build_data)
    assert DistillConfig(teacher="diffusers:m", data="cache:c", validate_every=5).validate().validate_every == 5
    for field, value, message in (
        ("cfg_mode", "half", "cfg_mode='half' must be one of"),
        ("model_dtype", "int8", "model_dtype='int8'"),
        ("guidance_min", 8.0, "guidance_min=8.0"),
        ("cfg_scale", -1.0, "cfg_scale=-1.0"),
    ):
        with pytest.raises(ValueError, match=message):
            DistillConfig(**{field: value}).validate()


# ----------------------------------------------------------------------------- with a tiny Flux pipeline

HAS_DIFFUSERS = importlib.util.find_spec("diffusers") is not None


def needs_diffusers(test):
    """Mark a test that builds tiny diffusers pipelines (skipped without diffusers)."""
    return pytest.mark.diffusers(pytest.mark.skipif(not HAS_DIFFUSERS, reason="needs diffusers")(test))


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    return build_tiny_flux_pipeline(tmp_path_factory.mktemp("tc-pipe"))


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red cat\na blue dog\na green frog\n")
    return path


def generate(model, prompts, out, *extra):
    return main(
        [
            "generate-data",
            "--model",
            str(model),
            "--prompts",
            str(prompts),
            "--out",
            str(out),
            "--steps",
            "2",
            "--buckets",
            "32x32,48x32",
            "--dtype",
            "fp32",
            "--device",
            "cpu",
            "--local-files-only",
            "--debug",
            *extra,
        ]
    )


def cache_state(out: Path) -> dict[str, torch.Tensor]:
    """id -> x0 of every indexed sample, checking index/shard consistency on the way."""
    entries, torn = cache_store.read_index(out)
    assert not torn
    ids = [e["id"] for e in entries]
    assert len(ids) == len(set(ids)), "duplicate ids"
    referenced = {e["shard"] for e in entries}
    assert {f"shards/{p.name}" for p in (out / "shards").iterdir()} == referenced, "unreferenced or lost shard files"
    state = {}
    for e in entries:
        shard = load_safetensors(out / e["shard"])
        assert cache_store.read_shard_ids(out / e["shard"])[e["row"]] == e["id"]
        state[e["id"]] = shard["x0"][e["row"]]
    return state


@pytest.fixture(scope="module")
def reference_cache(flux_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("tc-ref")
    (root / "prompts.txt").write_text("a red cat\na blue dog\na green frog\n")
    generate(flux_dir, root / "prompts.txt", root / "cache", "--shard-size", "4")
    return root / "cache"


@needs_diffusers
def test_pipeline_checks_name_a_missing_transformer_an_unknown_class_and_a_non_flow_matching_scheduler(tmp_path):
    from scfm.models.adapters import adapter_class_for, load_pipeline

    (tmp_path / "unet").mkdir()
    with pytest.raises(ValueError, match="has no 'transformer' subfolder"):
        load_pipeline(tmp_path)
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(
        ValueError, match=r"has a UNet2DConditionModel transformer; scfm has adapters for \[.*'FluxTransformer2DModel'"
    ):
        load_pipeline(tmp_path)
    (tmp_path / "transformer" / "config.json").write_text(json.dumps({"_class_name": "FluxTransformer2DModel"}))
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDIMScheduler"}))
    with pytest.raises(ValueError, match="DDIMScheduler, not a flow-matching one"):
        adapter_class_for(tmp_path)
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "FlowMatchEulerDiscreteScheduler"})
    )
    assert adapter_class_for(tmp_path).adapter_name == "flux"
    with pytest.raises(ValueError, match="does not exist"):
        adapter_class_for(tmp_path / "elsewhere")


@needs_diffusers
def test_validation_errors_come_before_the_model_is_loaded(flux_dir, prompts, tmp_path, monkeypatch):
    import scfm.models.adapters as adapters

    monkeypatch.setattr(adapters, "load_pipeline", lambda *a, **k: pytest.fail("loaded the pipeline before validating"))
    with pytest.raises(ValueError, match="bucket 30x32: .* divisible by 4"):
        generate(flux_dir, prompts, tmp_path / "c", "--buckets", "30x32")
    with pytest.raises(FileNotFoundError, match="prompt file"):
        generate(flux_dir, tmp_path / "nope.txt", tmp_path / "c")
    with pytest.raises(ValueError, match="does not exist"):
        generate(tmp_path / "no-model", prompts, tmp_path / "c")
    with pytest.raises(ValueError, match="no 'transformer' subfolder"):
        generate(tmp_path, prompts, tmp_path / "c")
    with pytest.raises(ValueError, match="steps=0 must be a positive integer"):
        generate(flux_dir, prompts, tmp_path / "c", "--steps", "0")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "meta.json").write_text(
        json.dumps(
            {
                **cache_writer.GenerateConfig(
                    model=str(flux_dir), out=tmp_path / "c", prompts=prompts, steps=2, dtype="fp32"
                ).meta("flux"),
                "guidance": 5.0,
            }
        )
    )
    with pytest.raises(
        ValueError,
        match=r"made with guidance=5.0, this run asks for guidance=3.5: write to a new out folder, or set guidance=5.0",
    ):
        generate(flux_dir, prompts, tmp_path / "c")


@needs_diffusers
def test_interrupted_generation_resumes_to_the_same_cache(flux_dir, prompts, reference_cache, tmp_path):
    out = tmp_path / "cache"
    generate(flux_dir, prompts, out, "--shard-size", "2", "--max-samples", "3")
    assert len(cache_store.read_index(out)[0]) == 3
    generate(flux_dir, prompts, out, "--shard-size", "2")
    state, ref = cache_state(out), cache_state(reference_cache)
    assert sorted(state) == sorted(ref) and len(state) == 6
    for key in ref:
        torch.testing.assert_close(state[key], ref[key], atol=1e-5, rtol=1e-5)  # same seeds -> same samples
    generate(flux_dir, prompts, out)  # nothing left to do: a no-op
    assert cache_state(out).keys() == state.keys()


@needs_diffusers
def test_a_crash_between_shard_write_and_index_append_loses_and_duplicates_nothing(
    flux_dir, prompts, reference_cache, tmp_path, monkeypatch
):
    out = tmp_path / "cache"
    real_append = cache_store.append_index
    calls = []

    def crash_on_second(cache_dir, entries):
        calls.append(len(entries))
        if len(calls) == 2:
            raise RuntimeError("killed after writing the shard, before the index append")
        real_append(cache_dir, entries)

    monkeypatch.setattr(cache_writer, "append_index", crash_on_second)
    with pytest.raises(RuntimeError, match="killed"):
        generate(flux_dir, prompts, out, "--shard-size", "2")
    # one orphan shard on disk
    assert len(list((out / "shards").iterdir())) == 2 and len(cache_store.read_index(out)[0]) == 2
    monkeypatch.setattr(cache_writer, "append_index", real_append)
    generate(flux_dir, prompts, out, "--shard-size", "2")
    state = cache_state(out)
    assert sorted(state) == sorted(cache_state(reference_cache))


@needs_diffusers
def test_a_torn_index_line_and_a_missing_shard_are_repaired_by_a_rerun(flux_dir, prompts, reference_cache, tmp_path):
    out = tmp_path / "cache"
    generate(flux_dir, prompts, out, "--shard-size", "2")
    entries = cache_store.read_index(out)[0]
    (out / entries[0]["shard"]).unlink()  # a lost shard file: its samples must be regenerated
    with open(out / cache_store.INDEX_FILE, "a") as f:
        f.write('{"id": "p000002_48x32_r00", "prom')  # a crash in the middle of an append
    assert cache_store.read_index(out)[1] is True
    generate(flux_dir, prompts, out, "--shard-size", "2")
    assert sorted(cache_state(out)) == sorted(cache_state(reference_cache))


@needs_diffusers
def test_edited_prompts_are_refused_and_appended_prompts_extend_the_cache(flux_dir, prompts, tmp_path):
    out = tmp_path / "cache"
    generate(flux_dir, prompts, out, "--buckets", "32x32")
    prompts.write_text("a red cat\nSOMETHING ELSE\na green frog\n")
    with pytest.raises(ValueError, match=r"sample p000001_32x32_r00 is cached with prompt .a blue dog.*Restore them"):
        generate(flux_dir, prompts, out, "--buckets", "32x32")
    prompts.write_text("a red cat\na blue dog\na green frog\na new one\n")
    generate(flux_dir, prompts, out, "--buckets", "32x32")
    assert len(cache_state(out)) == 4


@needs_diffusers
def test_image_folder_mode_encodes_center_crops_into_the_nearest_bucket(flux_dir, tmp_path):
    from PIL import Image

    from scfm.models.adapters import load_pipeline

    folder = tmp_path / "pairs"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for name, size in (("wide", (60, 40)), ("square", (33, 35))):
        pixels = (torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"a {name} picture\n")
    out = tmp_path / "cache"
    assert (
        main(
            [
                "generate-data",
                "--debug",
                "--model",
                str(flux_dir),
                "--images",
                str(folder),
                "--out",
                str(out),
                "--buckets",
                "32x32,48x32",
                "--dtype",
                "fp32",
                "--device",
                "cpu",
                "--local-files-only",
                "--previews",
            ]
        )
        == 0
    )
    entries = {e["id"]: e for e in cache_store.read_index(out)[0]}
    assert {k: (e["bucket"], e["image"], e["prompt"]) for k, e in entries.items()} == {
        "img_wide": ("48x32", "wide.png", "a wide picture"),
        "img_square": ("32x32", "square.png", "a square picture"),
    }
    assert json.loads((out / "meta.json").read_text())["mode"] == "images"
    assert (out / "previews" / "img_wide.png").is_file()
    pipe, adapter_cls = load_pipeline(flux_dir, local_files_only=True)
    e = entries["img_wide"]
    image = cache_inputs.load_image(folder / "wide.png", Bucket(48, 32))
    assert image.shape == (3, 32, 48) and -1 <= image.min() and image.max() <= 1
    expected = adapter_cls.encode_images(pipe, image[None], [torch.Generator().manual_seed(e["seed"])])
    torch.testing.assert_close(load_safetensors(out / e["shard"])["x0"][e["row"] : e["row"] + 1], expected)
    (folder / "extra.png").write_bytes((folder / "wide.png").read_bytes())
    with pytest.raises(
        ValueError, match=r"\['extra.png'\] .* have no caption: add a same-stem .txt file \(e.g. extra.txt\)"
    ):
        main(
            [
                "generate-data",
                "--debug",
                "--model",
                str(flux_dir),
                "--images",
                str(folder),
                "--out",
                str(out),
                "--local-files-only",
            ]
        )


# ----------------------------------------------------------------------------- batches from the cache


@needs_diffusers
def test_cache_batches_are_single_bucket_with_guidance_and_resume_exactly(reference_cache):
    source = CacheBatches(reference_cache, batch_size=3, seed=0, guidance_range=(0.0, 7.5))
    assert len(source) == 6 and source.buckets == ["32x32", "48x32"]
    batches = [source.next_batch() for _ in range(6)]
    shapes = {tuple(b["x0"].shape) for b in batches}
    assert shapes == {(3, 4, 16, 16), (3, 4, 16, 24)}  # both buckets drawn, one bucket per batch
    for b in batches:
        assert (
            b["x0"].dtype == torch.float32
            and b["prompt_embeds"].shape[0] == 3
            and b["pooled_prompt_embeds"].shape == (3, 32)
        )
        assert b["guidance"].shape == (3,) and 0 <= b["guidance"].min() and b["guidance"].max() <= 7.5
    state = source.state_dict()
    after = [source.next_batch() for _ in range(3)]
    resumed = CacheBatches(reference_cache, batch_size=3, seed=99, guidance_range=(0.0, 7.5))
    resumed.load_state_dict(state)
    for a, b in zip(after, (resumed.next_batch() for _ in range(3))):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    plain = CacheBatches(reference_cache, batch_size=2, seed=0)
    assert "guidance" not in plain.next_batch() and "guidance" not in plain.cond_keys


@needs_diffusers
def test_cache_batch_guidance_is_the_adapter_draw_from_the_same_generator(reference_cache):
    from scfm.models.flux import draw_guidance

    source = CacheBatches(reference_cache, batch_size=3, seed=4, guidance_range=(1.0, 6.0))
    generator = torch.Generator().manual_seed(4)
    for _ in range(4):
        batch = source.next_batch()
        bucket = int(torch.multinomial(source.weights, 1, generator=generator))
        torch.randint(0, len(source.rows[bucket]), (3,), generator=generator)
        assert torch.equal(batch["guidance"], draw_guidance(3, generator, 1.0, 6.0))


@needs_diffusers
def test_cache_batches_rows_are_the_cached_samples(reference_cache):
    source = CacheBatches(reference_cache, batch_size=1, seed=3)
    rows = {}
    for e in cache_store.read_index(reference_cache)[0]:
        shard = load_safetensors(reference_cache / e["shard"])
        rows[e["id"]] = (shard["x0"][e["row"]], shard["prompt_embeds"][e["row"]])
    for _ in range(5):
        b = source.next_batch()
        assert any(torch.equal(b["x0"][0], x) and torch.equal(b["prompt_embeds"][0], p) for x, p in rows.values())


@needs_diffusers
def test_sd3_cache_batches_carry_one_shared_negative_row(tmp_path, prompts):
    model = build_tiny_sd3_pipeline(tmp_path)
    out = tmp_path / "cache"
    generate(model, prompts, out, "--buckets", "32x32")
    b = CacheBatches(out, batch_size=4, seed=0, guidance_range=None).next_batch()
    assert (
        b["negative_prompt_embeds"].shape[0] == 1
        and b["negative_prompt_embeds"].shape[1:] == b["prompt_embeds"].shape[1:]
    )
    assert b["negative_pooled_prompt_embeds"].shape == (1, 64)


def test_cache_batches_name_a_missing_or_empty_cache(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a teacher cache .*scfm generate-data"):
        CacheBatches(tmp_path, batch_size=2)
    (tmp_path / "meta.json").write_text(json.dumps({"format": cache_store.FORMAT}))
    with pytest.raises(ValueError, match="has no samples"):
        CacheBatches(tmp_path, batch_size=2)
