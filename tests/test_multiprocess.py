"""Data-parallel training on 2 CPU processes (gloo) equals 1 process with the same global batch."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import scfm
from scfm.data.batches import Toy2DBatches
from scfm.fileio import atomic_save_safetensors, load_safetensors
from scfm.models.builtin import load_shipped_teacher
from scfm.train.presets import toy2d_config

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5
"""Max abs difference allowed against the 1-process run: only float summation order differs."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(out: Path, rank: int = 0) -> None:
    torch.set_num_threads(1)
    config = toy2d_config(max_steps=30, batch_size=64, fast_decay=0.5, slow_decay=0.9)
    result = scfm.distill(
        load_shipped_teacher("toy2d:8gaussians"), Toy2DBatches("8gaussians", 64, seed=0), config, progress=False
    )
    tensors = {f"{w}.{k}": v for w, group in result.weights.items() for k, v in group.items()}
    atomic_save_safetensors(tensors, out / f"rank{rank}.safetensors")


def _worker(rank: int, port: int, out: Path) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        _run(out, rank)
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_stay_identical_and_match_one_process(tmp_path):
    mp.spawn(_worker, args=(_free_port(), tmp_path / "ddp"), nprocs=2, join=True)
    _run(tmp_path / "single")
    r0, r1 = load_safetensors(tmp_path / "ddp/rank0.safetensors"), load_safetensors(tmp_path / "ddp/rank1.safetensors")
    single = load_safetensors(tmp_path / "single/rank0.safetensors")
    assert r0.keys() == r1.keys() == single.keys() and any(k.startswith("slow_ema.") for k in r0)
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    worst = max((r0[k] - single[k]).abs().max().item() for k in r0)
    assert worst < TOLERANCE, worst
    assert any(single[k].abs().max() > 0 for k in single if ".lora_B." in k)  # it did train


def test_torchrun_launches_the_cli_on_two_processes(tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port",
        str(_free_port()),
        "-m",
        "scfm",
        "distill",
        str(ROOT / "configs/toy2d.yaml"),
        "--set",
        f"output_dir={out}",
        "--set",
        "max_steps=20",
        "--set",
        "batch_size=64",
        "--set",
        "logger=jsonl",
        "--set",
        "validate_every=0",
        "--set",
        "checkpoint_every=10",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 process(es)" in proc.stdout
    assert (out / "lora.safetensors").is_file() and (out / "checkpoints" / "step_00000020").is_dir()
