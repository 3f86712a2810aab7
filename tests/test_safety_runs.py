"""Run safety contracts: a run folder holds one run, a resume keeps its config or says what changes,
SIGINT / SIGTERM stop with an exact checkpoint, the result is saved first, NaN messages name the cause."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import scfm
from scfm.fileio import atomic_save_safetensors, atomic_write_json, load_safetensors
from scfm.train import checkpoint as ckpt
from scfm.train.checkpoint import list_checkpoints, load_checkpoint, resolve_resume
from scfm.weights.lora import has_lora
from test_api import UserVelocity

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
RUN_FILES = ("lora.safetensors", "ema_fast.safetensors", "ema_slow.safetensors", "student.safetensors")


class NanWhenLoraOff(UserVelocity):
    """Returns nan whenever its LoRA delta is switched off (the teacher passes of a training step)."""

    def forward(self, x, t, style):
        v = super().forward(x, t, style)
        return torch.full_like(v, float("nan")) if getattr(self.net[0], "_disable_adapters", False) else v


def batches(n=16, nan_at=()):
    gen = torch.Generator().manual_seed(0)
    i = 0
    while True:
        x0 = torch.randn(n, 4, generator=gen)
        if i in nan_at:
            x0[0, 0] = float("nan")
        i += 1
        yield {"x0": x0, "style": torch.randn(n, 3, generator=gen)}


def config(out, **kw):
    values = dict(
        max_steps=4,
        lr=1e-3,
        lora=scfm.LoraSpec(targets=("net.0", "net.2"), rank=2, alpha=2.0),
        plan=scfm.PlanConfig(teacher_min=4, teacher_max=4),
        output_dir=None if out is None else str(out),
        checkpoint_every=2,
        keep_checkpoints=0,
        logger="jsonl",
        log_every=1,
    )
    return scfm.DistillConfig(**{**values, **kw})


def run(out, data=None, **kw):
    """One distillation of a fresh model (same initial weights every time)."""
    options = {k: kw.pop(k) for k in ("resume", "overwrite", "allow_config_change", "on_log") if k in kw}
    torch.manual_seed(0)
    model = kw.pop("model", None) or UserVelocity()
    return scfm.distill(model, data or batches(), config(out, **kw), progress=False, **options)


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def steps_logged(folder):
    return [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- a run folder holds one run


def test_new_run_into_a_used_output_dir_stops_before_training(tmp_path):
    run(tmp_path)
    before = snapshot(tmp_path)
    fresh = UserVelocity()
    with pytest.raises(FileExistsError, match=r"already holds a run.*resume='latest'.*another output_dir.*overwrite"):
        scfm.distill(fresh, batches(), config(tmp_path), progress=False)
    assert not has_lora(fresh), "the model was modified before the check"
    assert snapshot(tmp_path) == before


def test_an_existing_folder_without_a_run_is_fine(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    run(tmp_path)
    assert steps_logged(tmp_path) == [1, 2, 3, 4] and (tmp_path / "notes.txt").read_text() == "mine"


def test_the_cli_flags_overwrite_and_allow_config_change(tmp_path, capsys):
    from scfm.commands.cli import main

    out = tmp_path / "run"
    args = ["distill", str(ROOT / "configs/toy2d.yaml"), "--set", f"output_dir={out}", "--set", "batch_size=64"]
    args += ["--set", "max_steps=2", "--set", "logger=jsonl", "--set", "validate_every=0"]
    assert main(args) == 0
    assert main(args) == 2 and "already holds a run" in capsys.readouterr().err
    assert main(args + ["--resume", "latest", "--set", "lr=2e-3"]) == 2
    assert "lr: 0.001 in the checkpoint, 0.002 now" in capsys.readouterr().err
    assert main(args + ["--resume", "latest", "--set", "lr=2e-3", "--allow-config-change"]) == 0
    assert main(args + ["--overwrite"]) == 0
    assert len(list(tmp_path.glob("run.old-*"))) == 1 and steps_logged(out) == [2]


def test_overwrite_moves_the_old_run_aside_and_deletes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    run(out, keep_checkpoints=1, max_steps=6)
    before = snapshot(out)
    run(out, overwrite=True)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and snapshot(aside[0]) == before
    assert f"aside to '{aside[0]}'" in capsys.readouterr().out
    assert steps_logged(out) == [1, 2, 3, 4]
    assert [p.name for p in list_checkpoints(out)] == ["step_00000002", "step_00000004"]


def test_overwrite_of_the_run_being_resumed_is_refused(tmp_path):
    run(tmp_path)
    with pytest.raises(ValueError, match="overwrite=True with resume='latest'"):
        run(tmp_path, resume="latest", overwrite=True)


# ----------------------------------------------------------------------------- resume keeps the config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lr": 2e-3}, "lr: 0.001 in the checkpoint, 0.002 now"),
        ({"seed": 1}, "seed: 0 in the checkpoint, 1 now"),
        ({"batch_size": 4}, "batch_size: 8 in the checkpoint, 4 now"),
        ({"plan": scfm.PlanConfig(teacher_min=4, teacher_max=4, teacher_ratio=0.8)}, "plan.teacher_ratio: 0.4 in the"),
    ],
)
def test_resume_with_a_changed_run_field_names_both_values(tmp_path, change, message):
    run(tmp_path)
    with pytest.raises(ValueError, match=rf"{message}.*allow_config_change=True \(CLI --allow-config-change\)"):
        run(tmp_path, resume="latest", **change)


def test_resume_applies_allowed_fields_and_logs_them(tmp_path, capsys):
    run(tmp_path)
    result = run(tmp_path, resume="latest", max_steps=6, log_every=2, keep_checkpoints=2)
    out = capsys.readouterr().out
    assert "resume: max_steps 4 -> 6 (may change on resume)" in out
    assert "resume: log_every 1 -> 2 (may change on resume)" in out
    assert result.history[-1]["step"] == 6 and steps_logged(tmp_path) == [1, 2, 3, 4, 6]


def test_resume_with_allow_config_change_makes_the_schedule_follow_the_new_lr(tmp_path, capsys):
    run(tmp_path)
    result = run(tmp_path, resume="latest", max_steps=6, lr=3e-3, allow_config_change=True)
    assert "resume: lr 0.001 -> 0.003 (allow_config_change)" in capsys.readouterr().out
    assert [r["lr"] for r in result.history] == [1e-3] * 4 + [3e-3] * 2
    assert "lr: 0.003" in (tmp_path / "config.yaml").read_text()


def test_resume_with_another_lora_rank_is_a_clear_error(tmp_path):
    run(tmp_path)
    with pytest.raises(ValueError, match=r"lora.rank: 2 in the checkpoint, 4 now.*Resume with the checkpoint's values"):
        run(
            tmp_path,
            resume="latest",
            allow_config_change=True,
            lora=scfm.LoraSpec(targets=("net.0", "net.2"), rank=4, alpha=2.0),
        )


def test_resume_from_an_older_checkpoint_sets_the_newer_ones_aside_so_pruning_keeps_its_own(tmp_path, capsys):
    run(tmp_path, max_steps=6)
    run(tmp_path, max_steps=6, keep_checkpoints=1, resume=str(tmp_path / "checkpoints" / "step_00000002"))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000006"]
    (aside,) = (tmp_path / "checkpoints").glob("set-aside-*")
    assert sorted(p.name for p in aside.iterdir()) == ["step_00000004", "step_00000006"]
    assert (
        f"moved the checkpoints past step 2 (step_00000004, step_00000006) aside to {aside}" in capsys.readouterr().out
    )
    assert steps_logged(tmp_path) == [1, 2, 3, 4, 5, 6]


def test_resume_with_the_same_config_is_bit_identical_to_one_run(tmp_path):
    whole = run(tmp_path / "whole", max_steps=6)
    run(tmp_path / "parts", max_steps=4)
    parts = run(tmp_path / "parts", max_steps=6, resume="latest")
    assert all(torch.equal(a, b) for a, b in zip(whole.parameters(), parts.parameters()))


# ----------------------------------------------------------------------------- the result comes first


def test_lora_is_saved_even_when_the_final_checkpoint_write_fails(tmp_path, monkeypatch):
    def full_disk(tensors, path, metadata=None):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "atomic_save_safetensors", full_disk)
    with pytest.warns(UserWarning, match=r"result is saved in .*final checkpoint could not be written \(disk full\)"):
        result = run(tmp_path, checkpoint_every=0)
    saved = load_safetensors(tmp_path / "lora.safetensors")
    assert saved.keys() and all(torch.equal(saved[k], result.weights["slow_ema"][k]) for k in saved)
    assert list_checkpoints(tmp_path) == []


# ----------------------------------------------------------------------------- NaN messages name the cause


def test_nan_teacher_output_is_named_in_the_error(tmp_path):
    with pytest.raises(FloatingPointError) as err:
        run(tmp_path, model=NanWhenLoraOff(), plan=scfm.PlanConfig(teacher_min=4, teacher_max=4, teacher_ratio=1.0))
    message = str(err.value)
    assert "loss is nan at step 1: non-finite first in the teacher's output" in message
    assert "no checkpoint was written yet" in message and "Lowering lr does not help" in message


def test_nan_message_names_the_checkpoint_that_exists(tmp_path):
    with pytest.raises(FloatingPointError) as err:
        run(tmp_path, data=batches(nan_at={2}))
    message = str(err.value)
    assert "loss is nan at step 3: non-finite first in the data batch (x0 holds nan/inf)" in message
    assert f"the last checkpoint is intact: {tmp_path / 'checkpoints' / 'step_00000002'}" in message
    load_checkpoint(tmp_path / "checkpoints" / "step_00000002")


def test_first_batch_probe_rejects_a_teacher_that_returns_nan():
    class NanTeacher(UserVelocity):
        def forward(self, x, t, style):
            return super().forward(x, t, style) * float("nan")

    with pytest.raises(ValueError, match="the teacher returned nan/inf for x0"):
        scfm.distill(NanTeacher(), batches(), config(None), progress=False)


def test_data_that_runs_out_warns_with_the_step_and_saves_the_result(tmp_path):
    five = list(zip(range(5), batches()))
    with pytest.warns(UserWarning, match="data ran out at step 5 of max_steps=10"):
        result = run(tmp_path, data=(batch for _, batch in five), max_steps=10, checkpoint_every=0)
    assert result.history[-1]["step"] == 5 and (tmp_path / "lora.safetensors").is_file()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000005"]


# ----------------------------------------------------------------------------- checkpoints that do not parse


def _drop_hash(state):
    state.pop(ckpt.STATE_HASH, None)
    return state


def _rng_without_noise(folder, state):
    rng = load_safetensors(folder / "rng.safetensors")
    atomic_save_safetensors({"plan": rng["plan"]}, folder / "rng.safetensors")
    state["files"]["rng.safetensors"] = ckpt._sha256(folder / "rng.safetensors")
    return {**state, ckpt.STATE_HASH: ckpt._state_digest(state)}


CORRUPTIONS = {
    "cut json": lambda folder, state: (folder / "state.json").read_text()[:40],
    "a json list": lambda folder, state: [],
    "an edited value": lambda folder, state: {**state, "batches_consumed": 3},
    "a missing key": lambda folder, state: _drop_hash({k: v for k, v in state.items() if k != "scheduler"}),
    "a wrong type": lambda folder, state: _drop_hash({**state, "step": "4"}),
    "files not a mapping": lambda folder, state: _drop_hash({**state, "files": ["lora.safetensors"]}),
    "a missing tensor file": lambda folder, state: (folder / "ema.safetensors").unlink() or state,
    "a missing rng tensor": _rng_without_noise,
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_resume_latest_skips_a_checkpoint_whose_state_does_not_parse(tmp_path, capsys, kind):
    run(tmp_path)
    newest = list_checkpoints(tmp_path)[-1]
    state = json.loads((newest / "state.json").read_text())
    broken = CORRUPTIONS[kind](newest, state)
    if isinstance(broken, str):
        (newest / "state.json").write_text(broken)
    else:
        atomic_write_json(newest / "state.json", broken)
    _, meta, path = resolve_resume(tmp_path, "latest")
    assert path.name == "step_00000002" and meta["step"] == 2
    assert "skipping corrupt checkpoint step_00000004" in capsys.readouterr().out
    result = run(tmp_path, resume="latest")  # and the run goes on from the good one
    assert result.history[-1]["step"] == 4


# ----------------------------------------------------------------------------- signals


def test_distill_in_a_worker_thread_trains_without_signal_handlers(tmp_path):
    results = []
    worker = threading.Thread(target=lambda: results.append(run(tmp_path)))
    worker.start()
    worker.join()
    assert len(results) == 1 and (tmp_path / "lora.safetensors").is_file()


def test_a_second_signal_stops_at_once_and_the_handlers_come_back(tmp_path, capsys):
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def twice(record, engine):
        if record["step"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(SystemExit) as stop:
        run(tmp_path, max_steps=8, checkpoint_every=0, on_log=twice)
    assert stop.value.code == 143
    assert "stopped at once after step 3: no checkpoint of it" in capsys.readouterr().out
    assert list_checkpoints(tmp_path) == []
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_sigint_in_process_writes_an_exact_checkpoint(tmp_path, capsys):
    def ctrl_c(record, engine):
        if record["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)

    whole = run(tmp_path / "whole", max_steps=6)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", max_steps=6, checkpoint_every=0, on_log=ctrl_c)
    assert "SIGINT: stopped after step 3 of 6; exact checkpoint" in capsys.readouterr().out
    assert [p.name for p in list_checkpoints(tmp_path / "cut")] == ["step_00000003"]
    resumed = run(tmp_path / "cut", max_steps=6, checkpoint_every=0, resume="latest")
    assert all(torch.equal(a, b) for a, b in zip(whole.parameters(), resumed.parameters()))


def test_sigterm_through_the_cli_exits_143_with_an_exact_checkpoint(tmp_path):
    out = tmp_path / "run"
    sets = ["output_dir=" + str(out), "max_steps=100000", "batch_size=64", "logger=jsonl", "log_every=1"]
    sets += ["validate_every=0", "checkpoint_every=0"]
    cmd = [sys.executable, "-m", "scfm", "distill", str(ROOT / "configs/toy2d.yaml")]
    with open(tmp_path / "stderr.txt", "w") as stderr:  # the progress bar would fill a pipe
        proc = subprocess.Popen(
            cmd + [a for s in sets for a in ("--set", s)], env=ENV, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
    deadline = time.time() + 120
    while time.time() < deadline and not (
        (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().count("\n") >= 3
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, (tmp_path / "stderr.txt").read_text()[-2000:]
    (newest,) = list_checkpoints(out)
    step = load_checkpoint(newest)[1]["step"]
    assert f"SIGTERM: stopped after step {step} of 100000; exact checkpoint {newest}" in stdout
    assert "--resume latest" in stdout and not (out / "lora.safetensors").exists()


ZYGOTE = r"""
import json, os, sys, time, traceback
import torch
from torch import nn
import scfm

torch.set_num_threads(1)
MAX_STEPS = int(sys.argv[1])


class UserVelocity(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4 + 1 + 3, 32), nn.SiLU(), nn.Linear(32, 4))

    def forward(self, x, t, style):
        return self.net(torch.cat([x, t[:, None], style], dim=1))


def batches(slow_after):
    gen = torch.Generator().manual_seed(0)
    i = 0
    while True:
        if i >= slow_after:  # a slow tail, so that a late signal still lands before the end
            time.sleep(0.5)
        i += 1
        yield {"x0": torch.randn(16, 4, generator=gen), "style": torch.randn(16, 3, generator=gen)}


def train(job):
    torch.manual_seed(0)
    config = scfm.DistillConfig(
        max_steps=MAX_STEPS, lr=1e-3, lora=scfm.LoraSpec(targets=("net.0", "net.2"), rank=2, alpha=2.0),
        plan=scfm.PlanConfig(teacher_min=4, teacher_max=4), fast_decay=0.9, slow_decay=0.95,
        output_dir=job["out"], checkpoint_every=100000, logger="jsonl", log_every=1,
    )

    def on_log(record, engine):
        print(json.dumps({"job": job["id"], "step": record["step"]}), flush=True)

    resume = "latest" if job["resume"] else None
    scfm.distill(UserVelocity(), batches(job["slow_after"]), config, progress=False, resume=resume, on_log=on_log)


for line in sys.stdin:  # one job per line; each trains in a forked process (importing scfm costs seconds)
    job = json.loads(line)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            train(job)
        except KeyboardInterrupt:
            code = 130  # what `scfm` (commands/cli.py) returns for it
        except SystemExit as err:
            code = err.code
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print(json.dumps({"job": job["id"], "pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"job": job["id"], "exit": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class Zygote:
    """A subprocess that imported scfm once and trains each job in a forked child; the test signals the child."""

    def __init__(self, tmp_path, max_steps):
        script = tmp_path / "zygote.py"
        script.write_text(ZYGOTE)
        self.stderr = open(tmp_path / "zygote.err", "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(max_steps)],
            env=ENV,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        self.jobs = 0
        self.watchdog = threading.Timer(300, self.proc.kill)
        self.watchdog.start()

    def run(self, out, resume=False, signal_after=None, sig=None, delay=0.0, slow_after=10**9):
        """Run one job; with ``signal_after`` send ``sig`` ``delay`` s after the child logs that step.
        Returns (exit status, steps logged, the other lines printed)."""
        self.jobs += 1
        job = {"id": self.jobs, "out": str(out), "resume": resume, "slow_after": slow_after}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        pid, steps, text, sent = None, [], [], False
        while True:
            line = self.proc.stdout.readline()
            assert line, f"the zygote died: {Path(self.stderr.name).read_text()[-2000:]}"
            record = json.loads(line) if line.startswith("{") else None
            if record is None or record.get("job") != job["id"]:
                text.append(line)
                continue
            if "exit" in record:
                return record["exit"], steps, "".join(text)
            pid = record.get("pid", pid)
            if "step" in record:
                steps.append(record["step"])
            if signal_after is not None and not sent and pid is not None and steps and steps[-1] >= signal_after:
                time.sleep(delay)
                os.kill(pid, sig)
                sent = True

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.watchdog.cancel()
        self.stderr.close()


def kill_and_resume(tmp_path, runs, seed=1234, max_steps=32):
    """``runs`` times: train, SIGTERM or SIGINT at a random moment, check the exit status and the exact
    checkpoint, resume to the end; every result must equal the uninterrupted run's bit for bit."""
    rng = random.Random(seed)
    zygote = Zygote(tmp_path, max_steps)
    try:
        code, steps, _ = zygote.run(tmp_path / "whole")
        assert code == 0 and steps == list(range(1, max_steps + 1))
        for i in range(runs):
            sig = rng.choice([signal.SIGINT, signal.SIGTERM])
            after, delay = rng.randint(1, max_steps - 12), rng.uniform(0.0, 0.02)
            out = tmp_path / f"cut{i}"
            code, steps, text = zygote.run(out, signal_after=after, sig=sig, delay=delay, slow_after=max_steps - 6)
            assert code == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], text
            (newest,) = list_checkpoints(out)
            meta = load_checkpoint(newest)[1]
            assert meta["step"] == steps[-1] < max_steps and meta["batches_consumed"] == steps[-1]
            assert f"{sig.name}: stopped after step {steps[-1]} of {max_steps}; exact checkpoint {newest}" in text
            assert not (out / "lora.safetensors").exists()
            code, steps, text = zygote.run(out, resume=True)
            assert code == 0 and steps[-1] == max_steps, text
            for name in RUN_FILES:
                a, b = load_safetensors(tmp_path / "whole" / name), load_safetensors(out / name)
                assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (i, sig.name, name)
    finally:
        zygote.close()


def test_sigterm_and_sigint_at_random_moments_resume_bit_identically(tmp_path):
    kill_and_resume(tmp_path, runs=20)
