"""Nothing lost, nothing escapes: teacher caches and exports never touch files they did not write.

A cache's index cannot point generate-data's repair or the batch reader outside the cache; a
folder that is not a cache is never repaired; repair deletes only unindexed shard files of the
cache's own naming scheme; exports refuse to overwrite unless forced, and a forced fused export
replaces the old folder only once the new one is complete.
"""

import json
import os
import re
from pathlib import Path

import pytest
import torch

from scfm.commands.cli import main
from scfm.data import cache_store
from scfm.data.cache_batches import CacheBatches
from scfm.data.cache_inputs import Bucket
from scfm.data.cache_writer import GenerateConfig
from scfm.fileio import atomic_save_safetensors, atomic_write_json, load_safetensors
from scfm.models.tiny import build_tiny_flux_pipeline
from test_teacher_cache import generate, needs_diffusers  # the generate-data CLI call (--debug)

BUCKET = Bucket(32, 32)
VICTIM_BYTES = b"precious bytes that scfm did not write\n"


def files_under(folder: Path) -> dict[str, bytes | str]:
    """relative path -> bytes (files) or the link target (symlinks), for every entry under ``folder``."""
    out: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            out[rel] = f"-> {os.readlink(path)}"
        elif path.is_file():
            out[rel] = path.read_bytes()
        else:
            out[rel] = "<dir>"
    return out


def shard_tensors(rows: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """One 32x32-bucket shard of a tiny-Flux cache: x0 [rows, 4, 16, 16] and the two prompt embeddings."""
    g = torch.Generator().manual_seed(seed)
    return {
        "x0": torch.randn(rows, 4, 16, 16, generator=g),
        "prompt_embeds": torch.randn(rows, 7, 32, generator=g),
        "pooled_prompt_embeds": torch.randn(rows, 32, generator=g),
    }


def entry(sample_id: str, shard: str, row: int) -> dict:
    return {"id": sample_id, "prompt": "a cat", "bucket": BUCKET.name, "shard": shard, "row": row, "seed": row}


def make_cache(cache: Path, model: Path, prompts: Path, shards: int = 1, rows: int = 2) -> Path:
    """A teacher cache written with the cache's own writer functions (no pipeline): ``shards`` x ``rows`` samples.

    Its meta.json is the one ``generate(model, prompts, cache)`` asks for, so generate-data extends it.
    """
    cache.mkdir(parents=True)
    config = GenerateConfig(model=str(model), out=cache, prompts=prompts, steps=2, dtype="fp32", buckets=(BUCKET,))
    atomic_write_json(cache / cache_store.META_FILE, config.meta("flux"))
    for number in range(shards):
        ids = [f"s{number}_r{row}" for row in range(rows)]
        name = cache_store.write_shard(cache, number, shard_tensors(rows, number), ids, BUCKET)
        cache_store.append_index(cache, [entry(i, name, row) for row, i in enumerate(ids)])
    return cache


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    return build_tiny_flux_pipeline(tmp_path_factory.mktemp("safety-pipe"))


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red cat\na blue dog\na green frog\n")
    return path


@pytest.fixture
def no_pipeline(monkeypatch):
    """Fail the test if generate-data loads the pipeline (every refusal must come first)."""
    import scfm.models.adapters as adapters

    monkeypatch.setattr(adapters, "load_pipeline", lambda *a, **k: pytest.fail("loaded the pipeline"))


# ----------------------------------------------------------------------------- the teacher cache


@needs_diffusers
def test_cache_index_entry_outside_the_cache_is_refused_and_nothing_is_deleted(
    flux_dir, prompts, tmp_path, no_pipeline
):
    victim = tmp_path / "victim" / "important.txt"
    victim.parent.mkdir()
    victim.write_bytes(VICTIM_BYTES)
    cache = make_cache(tmp_path / "cache", flux_dir, prompts)
    good = (cache / cache_store.INDEX_FILE).read_text()
    os.symlink(victim, cache / "shards" / "shard_00007.safetensors")  # a link out of the cache, named like a shard
    for bad in (
        "../victim/important.txt",
        str(victim),  # absolute
        "shards/../../victim/important.txt",
        "shards/shard_00007.safetensors",
    ):
        (cache / cache_store.INDEX_FILE).write_text(good + json.dumps(entry("p000000_32x32_r00", bad, 0)) + "\n")
        before = files_under(cache)
        named = re.escape(f"{cache / cache_store.INDEX_FILE}:3: shard {bad!r}")
        for extra in ((), ("--max-samples", "0")):
            with pytest.raises(ValueError, match=named):
                generate(flux_dir, prompts, cache, *extra)
        with pytest.raises(ValueError, match=named):
            cache_store.repair_cache(cache)
        with pytest.raises(ValueError, match=named):
            CacheBatches(cache, batch_size=2)
        assert victim.read_bytes() == VICTIM_BYTES
        assert files_under(cache) == before  # nothing in the cache was repaired or deleted either


@needs_diffusers
def test_generate_data_refuses_a_folder_that_is_not_a_cache_and_deletes_nothing(
    flux_dir, prompts, tmp_path, no_pipeline, capsys
):
    folder = tmp_path / "photos"
    (folder / "shards").mkdir(parents=True)
    (folder / "shards" / "shard_00000.safetensors").write_bytes(VICTIM_BYTES)  # named like a cache shard
    (folder / "shards" / "holiday.jpg").write_bytes(VICTIM_BYTES)
    (folder / "index.jsonl").write_text(json.dumps(entry("x", "../elsewhere.txt", 0)) + "\n")
    before = files_under(folder)
    for extra in ((), ("--max-samples", "0")):
        with pytest.raises(FileExistsError, match=r"is not a teacher cache \(no meta.json\) and is not empty"):
            generate(flux_dir, prompts, folder, *extra)
    assert files_under(folder) == before
    args = ["generate-data", "--model", str(flux_dir), "--prompts", str(prompts), "--out", str(folder)]
    assert main(args + ["--local-files-only"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(folder) in err and "choose another out folder" in err
    with pytest.raises(FileExistsError, match="choose another out folder"):
        cache_store.repair_cache(folder)
    assert files_under(folder) == before

    (tmp_path / "a-file").write_bytes(VICTIM_BYTES)
    with pytest.raises(FileExistsError, match="exists and is not a folder"):
        generate(flux_dir, prompts, tmp_path / "a-file", "--max-samples", "0")
    other = tmp_path / "other"
    other.mkdir()
    (other / "meta.json").write_text(json.dumps({"format": "someone-elses-format"}))
    with pytest.raises(ValueError, match="not a scfm teacher cache meta file .*someone-elses-format"):
        generate(flux_dir, prompts, other, "--max-samples", "0")
    assert json.loads((other / "meta.json").read_text()) == {"format": "someone-elses-format"}

    empty = tmp_path / "empty"
    empty.mkdir()
    assert generate(flux_dir, prompts, empty, "--max-samples", "0") == 0  # an empty folder becomes a new cache
    assert cache_store.read_meta(empty)["format"] == cache_store.FORMAT


@needs_diffusers
def test_cache_repair_deletes_only_unindexed_shards_it_wrote(flux_dir, prompts, tmp_path, no_pipeline):
    victim = tmp_path / "victim.safetensors"
    victim.write_bytes(VICTIM_BYTES)
    cache = make_cache(tmp_path / "cache", flux_dir, prompts, shards=2)
    shards = cache / "shards"
    orphan = cache_store.write_shard(cache, 5, shard_tensors(1), ["never-indexed"], BUCKET)  # crash before append
    (shards / ".shard_00006.safetensors.k2j4_x9a.tmp").write_bytes(b"half a shard")  # crash mid-write
    (shards / "notes.txt").write_bytes(VICTIM_BYTES)
    (shards / "shard_5.safetensors").write_bytes(VICTIM_BYTES)  # not the scheme's name (5 digits)
    (shards / "shard_00008.safetensors.bak").write_bytes(VICTIM_BYTES)
    (shards / "shard_00009.safetensors").mkdir()
    os.symlink(victim, shards / "shard_00010.safetensors")  # the scheme's name, but a link: not written by scfm
    (cache / "readme.txt").write_bytes(VICTIM_BYTES)
    # shard 1's lines name the wrong rows: its samples are regenerated, so its file (scfm's own) goes
    lines = (cache / cache_store.INDEX_FILE).read_text().splitlines()
    swapped = [json.loads(line) for line in lines[2:]]
    swapped[0]["row"], swapped[1]["row"] = 1, 0
    (cache / cache_store.INDEX_FILE).write_text("\n".join(lines[:2] + [json.dumps(e) for e in swapped]) + "\n")
    kept_before = files_under(cache)
    for gone in (orphan, ".shard_00006.safetensors.k2j4_x9a.tmp", "shard_00001.safetensors"):
        kept_before.pop(gone if "/" in gone else f"shards/{gone}")
    kept_before.pop("index.jsonl")

    assert generate(flux_dir, prompts, cache, "--max-samples", "0") == 0  # validate + repair, then stop
    after = files_under(cache)
    assert [e["id"] for e in cache_store.read_index(cache)[0]] == ["s0_r0", "s0_r1"]
    after.pop("index.jsonl")
    after.pop("meta.json"), kept_before.pop("meta.json")  # rewritten with this run's settings
    assert after == kept_before
    assert victim.read_bytes() == VICTIM_BYTES


def test_cache_batches_refuse_out_of_range_rows(tmp_path):
    cache = make_cache(tmp_path / "cache", tmp_path / "model", tmp_path / "prompts.txt")
    index = cache / cache_store.INDEX_FILE
    good = index.read_text()
    for bad, message in (
        (entry("x", "shards/shard_00000.safetensors", 5), "row 5 is out of range: shard .* holds 2 rows"),
        (entry("x", "shards/shard_00000.safetensors", 1), "row 1 of shard .* is not sample 'x'"),
        (entry("x", "shards/shard_00000.safetensors", -1), "row=-1 must be >= 0"),
        (entry("x", "shards/shard_00000.safetensors", True), "row=True must be an integer"),
        (entry("x", "shards/shard_00000.safetensors", "0"), "row='0' must be an integer"),
        (entry("x", "shards/shard_00003.safetensors", 0), "shard 'shards/shard_00003.safetensors' does not exist"),
        ({"id": "x"}, "prompt=None must be a string"),
        ([1, 2], r"\[1, 2\] is not an index entry"),
    ):
        index.write_text(good + json.dumps(bad) + "\n")
        with pytest.raises(ValueError, match=re.escape(f"{index}:3: ") + message):
            CacheBatches(cache, batch_size=2)
    index.write_text(good)
    source = CacheBatches(cache, batch_size=8, seed=0)
    assert all(source.next_batch()["x0"].shape[0] == 8 for _ in range(4))
    # a shard replaced after the source was built: a short row is an error, never a short batch
    atomic_save_safetensors(shard_tensors(1), cache / "shards" / "shard_00000.safetensors")
    source._handles.clear()  # as in a fresh worker process
    with pytest.raises(ValueError, match="has no row 1"):
        for _ in range(8):
            source.next_batch()


def test_cache_batches_refuse_shards_of_mixed_layout(tmp_path):
    cache = make_cache(tmp_path / "cache", tmp_path / "model", tmp_path / "prompts.txt", shards=2)
    tensors = shard_tensors(2, 1)
    tensors["pooled_prompt_embeds"] = tensors["pooled_prompt_embeds"][:1]
    atomic_save_safetensors(tensors, cache / "shards" / "shard_00001.safetensors", metadata={"ids": '["s1_r0"]'})
    with pytest.raises(ValueError, match=r"index.jsonl:3: shard .* holds tensors .* with row counts \[1, 2\]"):
        CacheBatches(cache, batch_size=2)


# ----------------------------------------------------------------------------- exports


@pytest.fixture(scope="module")
def run_dir(flux_dir, tmp_path_factory):
    """A finished diffusers run folder (tiny Flux teacher, random non-zero LoRA), made without training."""
    pytest.importorskip("diffusers")
    from scfm.distilled import DistilledModel
    from scfm.models.flux import FluxAdapter
    from scfm.train.config import DistillConfig
    from scfm.train.sources import build_teacher
    from scfm.weights.lora import LoraSpec, attach_lora, lora_named_parameters

    run = tmp_path_factory.mktemp("safety-run")
    spec = LoraSpec(targets=FluxAdapter.default_lora_targets, rank=2, alpha=2.0)
    config = DistillConfig(teacher=f"diffusers:{flux_dir}", data="cache:unused", local_files_only=True, lora=spec)
    model = attach_lora(build_teacher(config), spec)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in lora_named_parameters(model):
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    DistilledModel(model, spec, config=config.to_dict()).save(run)
    return run


@pytest.fixture
def no_weights(monkeypatch):
    """Fail the test if export loads the run's weights (a refusal must come first)."""
    import scfm.commands.export as export_command

    monkeypatch.setattr(export_command, "load_run", lambda *a, **k: pytest.fail("loaded the weights"))


def export(run: Path, fmt: str, out: Path, *extra: str) -> int:
    return main(["export", "--run", str(run), "--format", fmt, "--out", str(out), "--dtype", "fp32", *extra])


@needs_diffusers
def test_export_refuses_to_overwrite_without_force(run_dir, tmp_path, monkeypatch, capsys):
    from scfm.commands.export import COMFYUI_WEIGHT_NAME, export_run
    from scfm.export import export_diffusers_lora, export_kohya_lora
    from scfm.train.run_folder import load_run

    lora = tmp_path / "lora.safetensors"
    lora.write_bytes(VICTIM_BYTES)
    (tmp_path / "comfy").mkdir()
    (tmp_path / "comfy" / COMFYUI_WEIGHT_NAME).write_bytes(VICTIM_BYTES)
    fused = tmp_path / "fused"
    fused.mkdir()
    (fused / "old.txt").write_bytes(VICTIM_BYTES)
    with monkeypatch.context() as patch:
        import scfm.commands.export as export_command

        patch.setattr(export_command, "load_run", lambda *a, **k: pytest.fail("loaded the weights"))
        for fmt, out, named in (
            ("diffusers", lora, lora),
            ("comfyui", tmp_path / "comfy", tmp_path / "comfy" / COMFYUI_WEIGHT_NAME),
            ("fused", fused, fused),
        ):
            assert export(run_dir, fmt, out) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and str(named) in err and "--force" in err
            with pytest.raises(FileExistsError, match="--force"):
                export_run(run_dir, fmt, out)
    assert lora.read_bytes() == VICTIM_BYTES and (fused / "old.txt").read_bytes() == VICTIM_BYTES

    assert export(run_dir, "diffusers", lora, "--force") == 0
    assert lora.read_bytes() != VICTIM_BYTES and any(".lora_A." in k for k in load_safetensors(lora))
    assert export(run_dir, "fused", fused, "--force") == 0
    assert not (fused / "old.txt").exists() and (fused / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["comfy", "fused", "lora.md", "lora.safetensors"]  # + card

    result, _ = load_run(run_dir)
    for write in (export_diffusers_lora, export_kohya_lora):
        target = tmp_path / f"{write.__name__}.safetensors"
        target.write_bytes(VICTIM_BYTES)
        with pytest.raises(FileExistsError, match=re.escape(f"{str(target)!r} already exists; pass overwrite=True")):
            write(result, target)
        assert target.read_bytes() == VICTIM_BYTES
        assert write(result, target, overwrite=True) == target and target.read_bytes() != VICTIM_BYTES


@needs_diffusers
def test_export_with_force_replaces_a_fused_folder_only_after_the_new_one_is_complete(run_dir, tmp_path, monkeypatch):
    from diffusers import FluxTransformer2DModel

    from scfm.commands.export import export_run

    fused = tmp_path / "fused"
    fused.mkdir()
    (fused / "config.json").write_bytes(VICTIM_BYTES)
    (fused / "diffusion_pytorch_model.safetensors").write_bytes(VICTIM_BYTES)
    before = files_under(fused)
    real_save = FluxTransformer2DModel.save_pretrained

    def disk_full(self, folder, **kwargs):
        (Path(folder) / "config.json").write_text("{")  # half written
        raise OSError("No space left on device")

    monkeypatch.setattr(FluxTransformer2DModel, "save_pretrained", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export_run(run_dir, "fused", fused, force=True)
    assert files_under(fused) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fused"]  # the temp folder is gone

    def save_while_old_is_intact(self, folder, **kwargs):
        assert files_under(fused) == before, "the old folder was touched before the new one was complete"
        assert Path(folder) != fused
        return real_save(self, folder, **kwargs)

    monkeypatch.setattr(FluxTransformer2DModel, "save_pretrained", save_while_old_is_intact)
    assert export_run(run_dir, "fused", fused, force=True) == fused
    assert FluxTransformer2DModel.from_pretrained(fused) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fused"]  # the old folder was removed after the swap


@needs_diffusers
def test_export_never_replaces_the_run_it_reads_even_with_force(run_dir, no_weights):
    from scfm.commands.export import export_run

    before = files_under(run_dir)
    with pytest.raises(FileExistsError, match="is the run's own lora.safetensors"):
        export_run(run_dir, "diffusers", run_dir / "lora.safetensors", force=True)
    for out in (run_dir, run_dir.parent):
        with pytest.raises(FileExistsError, match="holds the run folder"):
            export_run(run_dir, "fused", out, force=True)
    assert files_under(run_dir) == before
