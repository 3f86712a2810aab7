"""Validation images for diffusers-teacher runs: prompts encoded once by generate-data into the cache,
teacher-vs-student grids and tensorboard images while distilling, no text encoder, one VAE."""

import functools
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from scfm.commands.cli import main  # noqa: E402
from scfm.data.cache_store import INDEX_FILE, META_FILE  # noqa: E402
from scfm.data.cache_validation import META_KEY, VALIDATION_FILE, read_validation, validation_noise  # noqa: E402
from scfm.models.adapters import load_pipeline  # noqa: E402
from scfm.models.tiny import LATENT_CHANNELS, build_tiny_flux_pipeline, build_tiny_sd3_pipeline  # noqa: E402
from scfm.sampling import sample  # noqa: E402
from scfm.train.validation import grid_cells, tile_grid  # noqa: E402

pytestmark = pytest.mark.diffusers

PROMPTS = ["a red cat", "a blue dog"]
VALIDATION = ['{"prompt": "a green frog", "seed": 7}', '{"prompt": "a yellow bird"}', '{"prompt": "a fish"}']
SIZE = 32  # bucket 32x32 pixels -> latents [4, 16, 16]
TEACHER_STEPS, STUDENT_STEPS = 4, (1, 2)


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("validation-pipelines")
    return {"flux": build_tiny_flux_pipeline(root), "sd3": build_tiny_sd3_pipeline(root)}


def generate(model: Path, out: Path, *extra: str) -> None:
    prompts = out.parent / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    args = ["generate-data", "--model", str(model), "--prompts", str(prompts), "--out", str(out), "--steps", "2"]
    args += ["--buckets", f"{SIZE}x{SIZE}", "--dtype", "fp32", "--device", "cpu", "--local-files-only", *extra]
    assert main(args) == 0


def write_config(path: Path, model: Path, cache: Path, out: Path, **extra) -> Path:
    values = {
        "teacher": f"diffusers:{model}",
        "data": f"cache:{cache}",
        "output_dir": str(out),
        "max_steps": 2,
        "batch_size": 2,
        "lr": 1.0e-2,
        "lora.rank": 2,
        "lora.targets": ["attn.to_q", "attn.to_v"],
        "plan.teacher_min": TEACHER_STEPS,
        "plan.teacher_max": TEACHER_STEPS,
        "calibrate": False,
        "calibration_steps": list(STUDENT_STEPS),
        "logger": "tensorboard",
        "local_files_only": True,
        "validate_every": 1,
        **extra,
    }
    path.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in values.items()) + "\n")
    return path


@pytest.fixture(scope="module", params=["flux", "sd3"])
def cache(request, pipelines, tmp_path_factory):
    """A cache made with validation prompts (a .jsonl file, one prompt with its own seed)."""
    root = tmp_path_factory.mktemp(f"validation-{request.param}")
    (root / "validation.jsonl").write_text("\n".join(VALIDATION) + "\n")
    generate(pipelines[request.param], root / "cache", "--validation-prompts", str(root / "validation.jsonl"))
    return request.param, pipelines[request.param], root / "cache"


@pytest.fixture(scope="module")
def plain_cache(pipelines, tmp_path_factory):
    """A flux cache made without validation prompts."""
    out = tmp_path_factory.mktemp("plain") / "cache"
    generate(pipelines["flux"], out)
    return out


def count_inits(monkeypatch, classes) -> list[str]:
    """Record the class name of every instance of ``classes`` built (the wrapper keeps ``__init__``'s signature,
    which diffusers reads to sort config keys)."""
    built: list[str] = []
    for cls in classes:
        original = cls.__init__

        @functools.wraps(original)
        def init(self, *args, _original=original, **kwargs):
            built.append(type(self).__name__)
            _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", init)
    return built


def png(path: Path) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).float() / 255


# ----------------------------------------------------------------------------- generate-data


def test_generate_data_stores_the_validation_prompts_conditioning_as_the_adapter_encodes_it(cache):
    family, model, out = cache
    vset, stored = read_validation(out)
    assert vset.prompts == ("a green frog", "a yellow bird", "a fish") and vset.seeds[0] == 7 and vset.bucket == "32x32"
    assert json.loads((out / META_FILE).read_text())[META_KEY] == vset.to_meta()
    pipe, adapter_cls = load_pipeline(model, local_files_only=True)
    expected = adapter_cls.encode_prompts(pipe, list(vset.prompts), "cpu")
    assert stored.keys() == expected.keys()
    for key, value in expected.items():
        assert stored[key].shape == value.shape and stored[key].shape[0] == (1 if key.startswith("negative_") else 3)
        torch.testing.assert_close(stored[key], value, atol=0, rtol=0)
    assert ("negative_prompt_embeds" in stored) == adapter_cls.true_cfg


def test_validation_prompts_are_added_to_an_existing_cache_without_regenerating_it(
    plain_cache, pipelines, tmp_path, monkeypatch
):
    out = tmp_path / "cache"
    shutil.copytree(plain_cache, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != META_FILE}
    generate(pipelines["flux"], out, "--validation-prompts", "a frog", "--validation-prompts", "a bird")
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != META_FILE}
    assert after.pop(Path(VALIDATION_FILE)) and after == before  # shards and index untouched
    assert read_validation(out)[0].prompts == ("a frog", "a bird")
    import scfm.models.adapters as adapters

    monkeypatch.setattr(adapters, "load_pipeline", lambda *a, **k: pytest.fail("loaded the pipeline for nothing"))
    generate(pipelines["flux"], out, "--validation-prompts", "a frog", "--validation-prompts", "a bird")
    generate(pipelines["flux"], out)  # a rerun without the flag keeps the set
    assert (
        read_validation(out)[0].prompts == ("a frog", "a bird")
        and (out / INDEX_FILE).read_bytes() == before[Path(INDEX_FILE)]
    )


# ----------------------------------------------------------------------------- distill


def test_validate_every_writes_teacher_vs_student_grids_and_tensorboard_images_without_text_encoders(
    cache, tmp_path, monkeypatch
):
    from diffusers import AutoencoderKL
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel, UMT5EncoderModel

    family, model, cache_dir = cache
    encoders = count_inits(monkeypatch, (CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel, UMT5EncoderModel))
    vaes = count_inits(monkeypatch, (AutoencoderKL,))
    run = tmp_path / "run"
    assert main(["distill", str(write_config(tmp_path / "c.yaml", model, cache_dir, run))]) == 0
    assert encoders == [] and vaes == ["AutoencoderKL"]
    grids = sorted((run / "validation").glob("*.png"))
    assert [p.name for p in grids] == ["step_00000001.png", "step_00000002.png"]
    first, second = (png(p) for p in grids)
    rows, cols = 1 + len(STUDENT_STEPS), len(VALIDATION)
    assert first.shape == (3, rows * SIZE, cols * SIZE)
    assert torch.equal(first[:, :SIZE], second[:, :SIZE]) and not torch.equal(first[:, SIZE:], second[:, SIZE:])
    layout = json.loads((run / "validation" / "grid.json").read_text())
    assert layout["rows"] == ["teacher 4 steps", "student 1 step", "student 2 steps"] and len(layout["columns"]) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
        events.Reload()
    images = events.Images("validation/teacher_vs_student")
    assert [i.step for i in images] == [1, 2] and (images[0].width, images[0].height) == (cols * SIZE, rows * SIZE)

    # the teacher row is the plain transformer's samples of the stored conditioning from the stored seeds
    pipe, adapter_cls = load_pipeline(model, local_files_only=True)
    vset, cond = read_validation(cache_dir)
    if family == "flux":
        cond["guidance"] = torch.full((3,), 3.5)
    teacher = adapter_cls(pipe.transformer, **adapter_cls.guidance_kwargs(3.5, "runtime"))
    noise = validation_noise(vset.seeds, (LATENT_CHANNELS, SIZE // 2, SIZE // 2))  # the tiny VAE halves each side
    x0 = sample(teacher, noise, steps=TEACHER_STEPS, **cond)
    row = torch.cat(list(adapter_cls.decode_latents(pipe, x0)), dim=-1)
    torch.testing.assert_close(first[:, :SIZE], row, atol=1.5 / 255, rtol=0)


def test_validate_every_on_a_cache_without_validation_prompts_fails_in_one_line_before_any_weights_load(
    plain_cache, pipelines, tmp_path, capsys, monkeypatch
):
    from diffusers import AutoencoderKL

    import scfm.models.adapters as adapters

    monkeypatch.setattr(adapters.VelocityAdapter, "from_pretrained", lambda *a, **k: pytest.fail("loaded weights"))
    vaes = count_inits(monkeypatch, (AutoencoderKL,))
    config = write_config(tmp_path / "c.yaml", pipelines["flux"], plain_cache, tmp_path / "run", validate_every=5)
    assert main(["distill", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and vaes == []
    assert "validate_every=5 needs validation prompts" in err and "--validation-prompts" in err
    assert "without regenerating" in err and "set validate_every to 0" in err


# ----------------------------------------------------------------------------- the grid


def test_grid_rows_are_samplers_and_columns_prompts_and_videos_show_spaced_frames():
    rows = [torch.full((2, 3, 4, 5), float(r)) for r in range(3)]
    rows[1][1] += 0.5
    grid = tile_grid(rows)
    assert grid.shape == (3, 12, 10) and grid[0, 4, 0] == 1.0 and grid[0, 4, 5] == 1.5 and grid[0, 8, 9] == 2.0
    video = torch.arange(9.0).view(1, 1, 9, 1, 1).expand(2, 3, 9, 4, 5)
    cells = grid_cells(video)
    assert cells.shape == (2, 3, 4, 20) and cells[0, 0, 0, ::5].tolist() == [0.0, 3.0, 5.0, 8.0]


@pytest.mark.slow
def test_cache_memory_bench_measures_the_cost_of_validation_at_a_small_size(tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "cache_memory.json"
    bench = Path(__file__).resolve().parents[1] / "bench" / "cache_memory.py"
    args = [sys.executable, str(bench), "--t5-width", "256", "--t5-layers", "2", "--steps", "1", "--out", str(out)]
    subprocess.run(args, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    result = json.loads(out.read_text())
    assert [r["variant"] for r in result["validation_rows"]] == [
        "generate-data --validation-prompts",
        "distill (cache, validate_every=1)",
    ]
    assert result["validation_grids"] == 1 and all(r["peak_rss_mb"] > 0 for r in result["validation_rows"])
