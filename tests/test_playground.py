"""``scfm playground``: the models behind the page (built-in digits, 2-D, a diffusers run) and the page itself,
driven in headless Chromium.

The browser test needs gradio, playwright and a Chromium binary (Debian's ``chromium``; ``SCFM_CHROMIUM`` names
another) and is skipped without them. ``SCFM_PLAYGROUND_RUN=DIR`` runs it on another run or demo folder (e.g. a
full ``scfm demo --out DIR``), ``SCFM_SCREENSHOT_DIR=DIR`` copies its main screenshot to ``DIR/playground.png``
(the README's ``docs/playground.png``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

import scfm
from scfm.commands import playground_models as pg_models
from scfm.commands.cli import main
from scfm.commands.playground import BuiltinPlayground, find_run, open_playground
from scfm.data.batches import Toy2DBatches, digits_batches
from scfm.fileio import atomic_save_safetensors, atomic_write_json
from scfm.models.builtin import load_shipped_teacher
from scfm.train.presets import digits_config, toy2d_config

SCALES = {1: 1.5, 2: 1.25, 4: 1.0}
"""The fixture run's "calibrated" LoRA scales (set by hand: the short distillation skips calibration)."""


def _args(**values) -> argparse.Namespace:
    base = dict(run=None, model=None, lora=None, weights=None, local_files_only=True, height=None, width=None)
    return argparse.Namespace(**{**base, "dtype": "fp32", "device": "cpu", **values})


@pytest.fixture(scope="module")
def digits_demo(tmp_path_factory) -> Path:
    """A folder laid out as ``scfm demo --out`` writes it, in seconds: ``lora/`` (the shipped digits teacher
    distilled for 4 steps) and a ``metrics.json`` with rows in the demo's schema."""
    out = tmp_path_factory.mktemp("digits-demo")
    config = digits_config(max_steps=4, batch_size=32, calibrate=False, log_every=1)
    batches = digits_batches(config.batch_size, torch.Generator().manual_seed(0))
    result = scfm.distill(load_shipped_teacher("digits"), batches, config, progress=False)
    result.lora_scales = dict(SCALES)
    result.save(out / "lora")
    rows = [
        {"model": model, "solver": "euler", "steps": n, "nfe": n, "fd": fd, "class_acc": 0.9}
        for model, fds in (("teacher", {1: 60.0, 2: 20.0, 4: 6.0, 8: 3.5, 32: 2.6}), ("student", {1: 12.0, 2: 3.1}))
        for n, fd in fds.items()
    ]
    atomic_write_json(out / "metrics.json", {"rows": rows, "fd_floor": 2.37})
    return out


@pytest.fixture(scope="module")
def digits(digits_demo) -> BuiltinPlayground:
    return open_playground(_args(run=digits_demo))


def test_a_demo_folder_is_a_run_with_its_metrics(digits_demo, tmp_path):
    assert find_run(digits_demo) == (digits_demo / "lora", digits_demo / "metrics.json")
    assert find_run(digits_demo / "lora") == (digits_demo / "lora", digits_demo / "metrics.json")
    with pytest.raises(FileNotFoundError, match="scfm demo --out folder"):
        find_run(tmp_path)


def test_the_default_lora_scale_is_the_runs_calibrated_one(digits):
    assert digits.condition == "class"
    # 1 and 2 steps: the run's table; 3 steps: none there, so the strength the preset's step scale trained it at
    assert [digits.default_scale(n) for n in (1, 2, 3)] == [1.5, 1.25, (8 / 3) ** 0.75]
    assert "calibration for 2 steps" in digits.scale_note(2)
    assert "trained step scale for 3 steps" in digits.scale_note(3)
    assert digits.quality_plot().is_file()


def test_teacher_and_student_start_from_the_same_noise(digits):
    """At LoRA scale 0 and equal steps the student is the teacher, so both sides must match exactly."""
    same = digits.request(2, 2, 0.0, 1.0, "7", 3, 5)
    assert torch.equal(digits.sample("teacher", 2, same), digits.sample("student", 2, same))
    scaled = digits.request(2, 2, 1.25, 1.0, "7", 3, 5)
    assert not torch.equal(digits.sample("teacher", 2, scaled), digits.sample("student", 2, scaled))


def test_a_generation_reports_time_nfe_and_every_model_call(digits):
    request = digits.request(6, 2, 1.25, 1.0, "mixed", 0, 4)
    calls = []
    shot = digits.generate("teacher", request, calls.append)
    assert calls == [1, 2, 3, 4, 5, 6] and shot.nfe == 6 and shot.seconds > 0
    from PIL import Image

    assert Image.open(shot.path).size == ((2 * (8 + 1) + 1) * (pg_models.IMAGE_SIDE // 8),) * 2  # 2 x 2, gaps 1


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (dict(student_steps=0), "student steps must be a whole number from 1 to 8, not 0"),
        (dict(student_steps=9), "student steps"),
        (dict(teacher_steps=51), "teacher steps"),
        (dict(seed=-1), "seed must be a whole number 0 or more"),
        (dict(batch=0), "batch size"),
        (dict(shift=0), "shift must be a number > 0"),
        (dict(condition="eleven"), "class 'eleven'"),
        (dict(lora_scale=float("nan")), "LoRA scale"),
    ],
)
def test_bad_values_are_refused_naming_the_field(digits, values, message):
    good = dict(teacher_steps=8, student_steps=2, lora_scale=1.0, shift=1.0, condition="mixed", seed=0, batch=4)
    with pytest.raises(ValueError, match=re.escape(message)):
        digits.request(**{**good, **values})


def test_a_lora_that_does_not_fit_is_refused_and_the_old_one_kept(digits_demo, tmp_path):
    digits = open_playground(_args(run=digits_demo))  # its own copy: the swap must not reach the other tests
    request = digits.request(2, 2, 1.0, 1.0, "3", 0, 2)
    before = digits.sample("student", 2, request)
    bad = atomic_save_safetensors({"blocks.0.nope.lora_A.weight": torch.zeros(2, 2)}, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="do not fit"):
        digits.swap_lora(bad)
    assert torch.equal(digits.sample("student", 2, request), before)
    digits.swap_lora(digits_demo / "lora" / "student.safetensors")  # a fitting copy: taken, no calibrated scales
    assert digits.default_scale(2) == (8 / 2) ** 0.75  # the run's trained step scale still applies
    assert not torch.equal(digits.sample("student", 2, request), before)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> BuiltinPlayground:
    """A 2-D run: the shipped 8-gaussians teacher distilled for 3 steps."""
    run, name = tmp_path_factory.mktemp("toy") / "run", "toy2d:8gaussians"
    config = toy2d_config(max_steps=3, batch_size=64, calibrate=False, teacher=name, data=name)
    result = scfm.distill(load_shipped_teacher(name), Toy2DBatches("8gaussians", 64, seed=0), config, progress=False)
    result.save(run)
    return open_playground(_args(run=run))


def test_a_2d_run_draws_a_point_cloud(toy):
    assert toy.condition == "none" and toy.quality_plot() is None
    shot = toy.generate("student", toy.request(8, 2, 1.0, 1.0, "", 0, 500))
    assert shot.nfe == 2 and shot.path.stat().st_size > 1000


def test_the_page_builds_for_each_kind_of_run(toy, digits):
    pytest.importorskip("gradio", reason="gradio missing: pip install -e '.[playground]'")
    from scfm.commands.playground import build_page

    for playground in (toy, digits):
        page = build_page(playground)
        ids = {getattr(block, "elem_id", None) for block in page.blocks.values()}
        assert {"generate", "teacher-image", "student-image", "teacher-info", "student-info"} <= ids
        assert ("class" in ids) is (playground is digits)


def test_without_gradio_the_command_says_how_to_install_it(monkeypatch, capsys, digits_demo):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio raises ImportError
    assert main(["playground", "--run", str(digits_demo)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install" in err and "[playground]" in err


def test_model_without_lora_is_refused():
    with pytest.raises(ValueError, match="--lora"):
        open_playground(_args(model="some/pipeline"))


# ---------------------------------------------------------------------- a diffusers run


@pytest.fixture(scope="module")
def flux_run(tmp_path_factory) -> Path:
    """A run of the shipped miniature Flux pipeline: a 2-prompt cache, 2 distillation steps (the CLI path)."""
    pytest.importorskip("diffusers")
    from scfm.models.miniature import digits_prompt, shipped_pipeline_path

    root = tmp_path_factory.mktemp("flux-run")
    model = shipped_pipeline_path("flux-digits")
    (root / "prompts.txt").write_text(f"{digits_prompt(1)}\n{digits_prompt(7)}\n")
    data = ["generate-data", "--model", str(model), "--prompts", str(root / "prompts.txt"), "--out", str(root / "c")]
    assert main([*data, "--steps", "2", "--buckets", "8x8", "--device", "cpu", "--local-files-only"]) == 0
    config = {
        "teacher": f"diffusers:{model}",
        "data": f"cache:{root / 'c'}",
        "output_dir": str(root / "run"),
        "max_steps": 2,
        "batch_size": 2,
        "lora.rank": 2,
        "plan.teacher_min": 4,
        "plan.teacher_max": 4,
        "calibrate": False,
        "local_files_only": True,
        "final_weights": "student",
        "logger": "jsonl",
    }
    (root / "config.yaml").write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in config.items()))
    assert main(["distill", str(root / "config.yaml")]) == 0
    return root / "run"


@pytest.mark.diffusers
def test_a_diffusers_run_shows_prompted_images_at_its_training_size(flux_run, tmp_path):
    from PIL import Image

    flux = open_playground(_args(run=flux_run))
    assert flux.condition == "prompt" and (flux.height, flux.width) == (8, 8)  # the cache's bucket, not 1024
    assert flux.prompt.startswith("a handwritten digit") and flux.default_guidance == (3.5, 3.5)
    request = flux.request(3, 1, 1.0, flux.default_shift, flux.prompt, 0, 1, (3.5, 3.5))
    teacher, student = flux.generate("teacher", request), flux.generate("student", request)
    assert (teacher.nfe, student.nfe) == (3, 1)
    assert Image.open(student.path).size == ((8 + 2) * (pg_models.IMAGE_SIDE // 8),) * 2  # 1 image, 1-pixel border
    with pytest.raises(ValueError, match="prompt is empty"):
        flux.request(3, 1, 1.0, 1.0, "  ", 0, 1, (3.5, 3.5))
    before = flux.sample("student", 1, request)
    bad = atomic_save_safetensors({"transformer.x.lora_A.weight": torch.zeros(2, 2)}, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="previous LoRA is kept"):
        flux.swap_lora(bad)
    assert torch.allclose(flux.sample("student", 1, request), before, atol=1e-6)


# ---------------------------------------------------------------------- the page in a real browser


def _chromium() -> str | None:
    return os.environ.get("SCFM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(request, tmp_path):
    """``scfm playground --run DEMO`` in a subprocess on a free loopback port; yields its URL and the run."""
    pytest.importorskip("gradio", reason="gradio missing: pip install -e '.[playground]'")
    pytest.importorskip("playwright", reason="playwright missing: pip install -e '.[test]'")
    if _chromium() is None:
        pytest.skip("no chromium binary: apt-get install chromium (or set SCFM_CHROMIUM)")
    run = Path(os.environ.get("SCFM_PLAYGROUND_RUN") or request.getfixturevalue("digits_demo"))
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    command = [sys.executable, "-m", "scfm", "playground", "--run", str(run), "--port", str(port), "--device", "cpu"]
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the playground did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
                time.sleep(0.3)
        yield url, run
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def _image(page, which: str):
    from PIL import Image

    src = page.locator(f"#{which}-image img").get_attribute("src")
    with urllib.request.urlopen(src, timeout=10) as response:
        return Image.open(io.BytesIO(response.read())).convert("L")


@pytest.mark.browser
def test_the_page_compares_teacher_and_student_in_a_browser(server, tmp_path):
    import numpy as np
    from playwright.sync_api import expect, sync_playwright

    url, run = server
    run_dir, _ = find_run(run)
    calibrated = json.loads((run_dir / "scfm_config.json").read_text()).get("lora_scales", {})
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        steps = page.locator("#student-steps input")
        steps.fill("2")
        steps.press("Tab")
        expect(page.locator("#lora-scale input")).to_have_value(f"{float(calibrated.get('2', 1.0)):g}")

        start = time.perf_counter()
        page.click("#generate")
        page.locator("#student-image img").wait_for(timeout=30_000)
        first_image = time.perf_counter() - start
        expect(page.locator("#teacher-info")).to_contain_text("wall time", timeout=60_000)
        print(f"first image {first_image:.2f} s after the click")
        assert first_image <= 5.0

        teacher, student = _image(page, "teacher"), _image(page, "student")
        grid = 4 * (8 + 1) + 1  # 16 digits, 4 a row, 1-pixel gaps
        assert teacher.size == student.size == (grid * (pg_models.IMAGE_SIDE // 8),) * 2
        a, b = np.asarray(teacher, dtype=float), np.asarray(student, dtype=float)
        assert a.std() > 20 and b.std() > 20 and np.abs(a - b).mean() > 1  # real digits, and not the same ones
        infos = {side: page.locator(f"#{side}-info").inner_text() for side in ("teacher", "student")}
        times = {side: float(re.search(r"([\d.]+) s wall time", text).group(1)) for side, text in infos.items()}
        assert "NFE 32 per sample" in infos["teacher"] and "NFE 2 per sample" in infos["student"]
        assert all(t > 0 for t in times.values()), infos
        page.screenshot(path=tmp_path / "playground.png", full_page=True)
        if os.environ.get("SCFM_SCREENSHOT_DIR"):
            keep = Path(os.environ["SCFM_SCREENSHOT_DIR"])
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(tmp_path / "playground.png", keep / "playground.png")

        steps.fill("0")
        steps.press("Tab")
        page.click("#generate")
        expect(page.get_by_text("student steps must be a whole number from 1 to 8, not 0")).to_be_visible()
        page.wait_for_timeout(500)  # the toast slides in
        page.screenshot(path=tmp_path / "steps_0.png", full_page=True)
        bad = atomic_save_safetensors({"nope.lora_A.weight": torch.zeros(2, 2)}, tmp_path / "other.safetensors")
        page.locator("input[type=file]").set_input_files(str(bad))
        expect(page.get_by_text("LoRA weights do not fit this model")).to_be_visible(timeout=20_000)
        page.wait_for_timeout(500)
        page.screenshot(path=tmp_path / "bad_lora.png", full_page=True)

        steps.fill("1")  # the server is still up and still has the run's LoRA
        steps.press("Tab")
        page.click("#generate")
        expect(page.locator("#student-info")).to_contain_text("NFE 1 per sample", timeout=30_000)
        expect(page.locator("#teacher-info")).to_contain_text("wall time", timeout=60_000)
        browser.close()
    print(f"screenshots in {tmp_path}: times {times}")
