"""Training-engine contracts: exact resume, fault handling, checkpoints, multi-process."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import scfm
from scfm.fileio import load_safetensors
from scfm.train import checkpoint as ckpt
from scfm.train.checkpoint import list_checkpoints, load_checkpoint, resolve_resume

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
RUN_FILES = ("lora.safetensors", "ema_fast.safetensors", "ema_slow.safetensors")


def cli(out, *extra):
    return [
        sys.executable,
        "-m",
        "scfm",
        "distill",
        str(ROOT / "configs/toy2d.yaml"),
        "--set",
        f"output_dir={out}",
        "--set",
        "max_steps=600",
        "--set",
        "batch_size=64",
        "--set",
        "checkpoint_every=40",
        "--set",
        "logger=jsonl",
        "--set",
        "validate_every=0",
        *extra,
    ]


def assert_same_run_files(a, b):
    for name in RUN_FILES:
        ta, tb = load_safetensors(a / name), load_safetensors(b / name)
        assert ta.keys() == tb.keys()
        assert all(torch.equal(ta[k], tb[k]) for k in ta), name


def test_sigkill_after_first_checkpoint_then_resume_is_bit_identical(tmp_path):
    subprocess.run(cli(tmp_path / "full"), check=True, env=ENV, capture_output=True)
    proc = subprocess.Popen(cli(tmp_path / "killed"), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list_checkpoints(tmp_path / "killed") and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "lora.safetensors").exists(), "the run finished before it was killed"
    subprocess.run(cli(tmp_path / "killed", "--resume", "latest"), check=True, env=ENV, capture_output=True)
    assert_same_run_files(tmp_path / "full", tmp_path / "killed")


class Field(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 16), nn.Linear(16, 2)

    def forward(self, x, t):
        return self.fc2(torch.tanh(self.fc1(torch.cat([x, t[:, None]], 1))))


def data_with_nan_at(bad_batches):
    gen = torch.Generator().manual_seed(0)
    i = 0
    while True:
        x0 = torch.randn(8, 2, generator=gen)
        if i in bad_batches:
            x0[0, 0] = float("nan")
        i += 1
        yield {"x0": x0}


def config(out, **kw):
    values = dict(
        max_steps=40,
        lr=1e-3,
        lora=scfm.LoraSpec(targets=("fc1", "fc2"), rank=2, alpha=2.0),
        output_dir=str(out),
        checkpoint_every=10,
        logger="jsonl",
    )
    return scfm.DistillConfig(**{**values, **kw})


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 26.*last checkpoint is intact"):
        scfm.distill(Field(), data_with_nan_at({25}), config(tmp_path), progress=False)
    newest = list_checkpoints(tmp_path)[-1]
    assert newest.name == "step_00000020"
    load_checkpoint(newest)


def test_nan_loss_is_skipped_and_counted_when_configured(tmp_path):
    torch.manual_seed(0)
    result = scfm.distill(Field(), data_with_nan_at({5, 17}), config(tmp_path, nan_policy="skip"), progress=False)
    assert result.history[-1]["step"] == 40 and result.history[-1]["skipped_steps"] == 2
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_failed_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    torch.manual_seed(0)
    real = ckpt.atomic_save_safetensors
    calls = {"n": 0}

    def flaky(tensors, path, metadata=None):
        calls["n"] += 1
        if calls["n"] == 8:  # inside the second checkpoint
            raise OSError("disk full")
        return real(tensors, path, metadata)

    monkeypatch.setattr(ckpt, "atomic_save_safetensors", flaky)
    with pytest.raises(OSError, match="disk full"):
        scfm.distill(Field(), data_with_nan_at(set()), config(tmp_path), progress=False)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000010"]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000010"]
    load_checkpoint(list_checkpoints(tmp_path)[0])


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_with_a_warning(tmp_path, capsys):
    torch.manual_seed(0)
    scfm.distill(Field(), data_with_nan_at(set()), config(tmp_path, max_steps=30), progress=False)
    newest = list_checkpoints(tmp_path)[-1]
    data = bytearray((newest / "lora.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (newest / "lora.safetensors").write_bytes(bytes(data))
    _, meta, path = resolve_resume(tmp_path, "latest")
    assert path.name == "step_00000020" and meta["step"] == 20
    assert "skipping corrupt checkpoint step_00000030" in capsys.readouterr().out


def test_ctrl_c_writes_a_checkpoint_and_resume_continues(tmp_path):
    torch.manual_seed(0)

    def interrupt(record, engine):
        if record["step"] == 15:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        scfm.distill(Field(), data_with_nan_at(set()), config(tmp_path, log_every=5), progress=False, on_log=interrupt)
    assert list_checkpoints(tmp_path)[-1].name == "step_00000015"
    torch.manual_seed(0)
    result = scfm.distill(
        Field(), data_with_nan_at(set()), config(tmp_path, log_every=5), progress=False, resume="latest"
    )
    assert result.history[-1]["step"] == 40


def test_resume_of_a_missing_run_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        scfm.distill(Field(), data_with_nan_at(set()), config(tmp_path), progress=False, resume="latest")


def test_lr_factor_warms_up_then_decays_to_the_final_ratio():
    from scfm.train.engine import lr_factor

    assert [lr_factor(s, 4, 20, "constant", 0.0) for s in (0, 3, 4, 19)] == [0.25, 1.0, 1.0, 1.0]
    assert lr_factor(19, 4, 20, "cosine", 0.1) == pytest.approx(0.1) and lr_factor(
        19, 4, 20, "linear", 0.0
    ) == pytest.approx(0.0)
    mid = lr_factor(11, 4, 20, "cosine", 0.0)  # half way through the decay
    assert mid == pytest.approx(0.5) and lr_factor(11, 4, 20, "linear", 0.0) == pytest.approx(0.5)


def test_baked_cfg_runs_the_teacher_guided_and_the_emas_and_student_as_the_student_runs():
    """Baked CFG: the EMAs are copies of the student, which has learned the guided velocity in one
    unguided pass; guiding them again would apply CFG twice to the self targets."""
    from contextlib import contextmanager

    from scfm.objective.plans import PlanConfig
    from scfm.train.step import ShortcutStep
    from scfm.weights.ema import FastSlowEMA

    class Baked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(()))
            self.guided, self.calls = True, []

        @contextmanager
        def student_pass(self):
            self.guided = False
            try:
                yield
            finally:
                self.guided = True

        def forward(self, x, t):
            self.calls.append(self.guided)
            return x * 0 + self.weight

    model = Baked()
    params = [model.weight]
    step = ShortcutStep(model, params, FastSlowEMA(["w"], params), PlanConfig())
    x, t = torch.zeros(2, 3), torch.full((2,), 0.5)
    for source, guided in ((step._teacher, True), (step._fast, False), (step._slow, False)):
        model.calls.clear()
        source(x, t, {})
        assert model.calls == [guided], source.__name__
