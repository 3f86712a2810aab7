"""Checkpoints: a folder of safetensors files plus ``state.json``, written atomically.

``<output_dir>/checkpoints/step_00000100/`` holds one safetensors file per tensor group
(``lora``, ``ema``, ``optimizer``, ``rng``, ``data``) and ``state.json`` (step, scheduler,
optimizer hyper-parameters, config, and a sha256 of every file). The folder is written
under a temporary name and renamed into place, so a crash never leaves a half checkpoint
under a real name; a checkpoint whose files do not match their hashes counts as corrupt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from scfm.fileio import atomic_save_safetensors, atomic_write_json, load_safetensors

log = logging.getLogger(__name__)
PREFIX = "step_"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def save_checkpoint(
    output_dir: str | os.PathLike,
    step: int,
    groups: dict[str, dict[str, torch.Tensor]],
    meta: dict[str, Any],
    keep: int = 3,
) -> Path:
    """Write checkpoint ``step``; afterwards delete all but the newest ``keep`` (0 keeps all)."""
    root = checkpoint_root(output_dir)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".{PREFIX}{step:08d}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        hashes = {}
        for name, tensors in groups.items():
            path = atomic_save_safetensors(tensors, tmp / f"{name}.safetensors")
            hashes[path.name] = _sha256(path)
        atomic_write_json(tmp / "state.json", {**meta, "step": step, "files": hashes})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep > 0:
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Read and verify one checkpoint folder; ``ValueError`` names what is missing or corrupt."""
    path = Path(path)
    state_file = path / "state.json"
    if not state_file.is_file():
        raise ValueError(f"checkpoint {str(path)!r} has no state.json: it is incomplete or not a checkpoint folder")
    try:
        meta = json.loads(state_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"checkpoint {str(path)!r}: state.json is corrupt ({err})") from err
    groups = {}
    for name, digest in meta.get("files", {}).items():
        file = path / name
        if not file.is_file():
            raise ValueError(f"checkpoint {str(path)!r} is missing {name}")
        if _sha256(file) != digest:
            raise ValueError(f"checkpoint {str(path)!r}: {name} does not match its recorded sha256 (corrupt)")
        groups[name.removesuffix(".safetensors")] = load_safetensors(file)
    return groups, meta


def resolve_resume(
    output_dir: str | os.PathLike, resume: str
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any], Path]:
    """``resume`` is ``"latest"`` (newest good checkpoint in output_dir, falling back past
    corrupt ones with a warning) or a checkpoint folder path."""
    if resume != "latest":
        groups, meta = load_checkpoint(resume)
        return groups, meta, Path(resume)
    candidates = list_checkpoints(output_dir)
    if not candidates:
        raise FileNotFoundError(
            f"--resume latest: no checkpoint in {str(checkpoint_root(output_dir))!r}; start without --resume"
        )
    for path in reversed(candidates):
        try:
            groups, meta = load_checkpoint(path)
            return groups, meta, path
        except ValueError as err:
            log.warning("skipping corrupt checkpoint: %s", err)
            print(f"warning: skipping corrupt checkpoint {path.name}: {err}")
    raise ValueError(f"--resume latest: every checkpoint in {str(checkpoint_root(output_dir))!r} is corrupt")


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (safetensors) and JSON metadata."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        pid, _, name = key.partition(".")
        state.setdefault(int(pid), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
