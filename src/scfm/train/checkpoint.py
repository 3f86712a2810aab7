"""Checkpoints: a folder of safetensors files plus ``state.json``, written atomically, and
what may change when a run resumes from one.

``<output_dir>/checkpoints/step_00000100/`` holds one safetensors file per tensor group
(``lora``, ``ema``, ``optimizer``, ``rng``, ``data``) and ``state.json`` (step, scheduler,
optimizer hyper-parameters, config, a sha256 of every file, and a sha256 of its own content).
The folder is written under a temporary name and renamed into place, so a crash never leaves
a half checkpoint under a real name. A checkpoint whose files or ``state.json`` do not match
their hashes, or whose ``state.json`` does not have a checkpoint's keys and types, counts as
corrupt: ``resume="latest"`` skips it with a warning and takes the next newest.
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
from scfm.train.config import DistillConfig, dotted_values

log = logging.getLogger(__name__)
PREFIX = "step_"
STATE_HASH = "state_sha256"
"""Key in ``state.json``: sha256 of the rest of the state (:func:`_state_digest`)."""
REQUIRED_GROUPS = {"lora": (), "ema": (), "optimizer": (), "rng": ("plan", "noise")}
"""Tensor groups every checkpoint has, with the tensors a group must hold."""
STATE_TYPES: dict[str, type] = {
    "step": int,
    "files": dict,
    "optimizer": dict,
    "scheduler": dict,
    "scaler": dict,
    "config": dict,
    "history": list,
    "skipped": int,
    "batches_consumed": int,
}
"""The keys of ``state.json`` and their JSON types."""
OPTIONAL_STATE_KEYS = ("history", "skipped", "batches_consumed")
"""Keys of :data:`STATE_TYPES` that older checkpoints may lack (their type is checked when present)."""

RESUMABLE_FIELDS: dict[str, str] = {
    "max_steps": "the run's length (a decaying lr_schedule re-stretches to the new end from the current step)",
    "checkpoint_every": "bookkeeping",
    "keep_checkpoints": "bookkeeping",
    "log_every": "bookkeeping",
    "logger": "bookkeeping",
    "validate_every": "bookkeeping",
    "output_dir": "where the run writes (a moved run folder)",
    "device": "where it runs (between device types the noise generator restarts)",
    "compile": "how it runs (the same math)",
    "gradient_checkpointing": "how it runs (the same math)",
    "offload_ema": "where the EMAs are kept (the same math)",
    "flush_denormal": "how it runs (subnormal floats only)",
    "local_files_only": "where the teacher loads from",
    "nan_policy": "failure handling",
    "max_skipped_steps": "failure handling",
    "final_weights": "which LoRA copy the result carries",
    "extra": "free-form notes",
    "calibrate": "acts after the last step (the run's LoRA-scale calibration)",
    "calibration_steps": "acts after the last step",
    "calibration_samples": "acts after the last step",
}
"""Config fields (dotted names) a resume may change: they are applied and printed. Any other
difference stops the resume unless ``allow_config_change=True``; :data:`UNLOADABLE_FIELDS` always stop.
With ``allow_config_change`` every other field is applied too: the engine is built from the new config,
the optimizer and schedule follow its ``lr``, ``weight_decay`` and schedule from the current step on
(:meth:`~scfm.train.engine.Distiller.follow_config`), a new ``seed`` restarts the plan and noise
generators from it, and the data position stays the checkpoint's count of batches. ``lora.init`` and
``ema_init`` only shape a run's start: a resume loads the checkpoint's tensors, so they change nothing
but the record."""
UNLOADABLE_FIELDS: tuple[str, ...] = ("lora.rank", "lora.targets", "lora.exclude", "optimizer")
"""Config fields that change the LoRA tensors' names or shapes, or the form of the optimizer state
(``optimizer``): a checkpoint with other values cannot be loaded. ``lora.alpha`` (it only rescales the LoRA
output) and ``lora.dropout`` can, with ``allow_config_change=True``."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def checkpoint_path(output_dir: str | os.PathLike, step: int) -> Path:
    """The folder checkpoint ``step`` of the run in ``output_dir`` has (or would have)."""
    return checkpoint_root(output_dir) / f"{PREFIX}{step:08d}"


def save_checkpoint(
    output_dir: str | os.PathLike,
    step: int,
    groups: dict[str, dict[str, torch.Tensor]],
    meta: dict[str, Any],
    keep: int = 3,
) -> Path:
    """Write checkpoint ``step``; afterwards delete all but the newest ``keep`` (0 keeps all)."""
    root = checkpoint_root(output_dir)
    final = checkpoint_path(output_dir, step)
    tmp = root / f".{PREFIX}{step:08d}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        hashes = {}
        for name, tensors in groups.items():
            path = atomic_save_safetensors(tensors, tmp / f"{name}.safetensors")
            hashes[path.name] = _sha256(path)
        state = {**meta, "step": step, "files": hashes}
        atomic_write_json(tmp / "state.json", {**state, STATE_HASH: _state_digest(state)})
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


def _state_digest(state: dict[str, Any]) -> str:
    """sha256 of ``state`` (without its own hash) as canonical JSON, after a JSON round trip (so the
    state as written and as read back give one digest): what :data:`STATE_HASH` records."""
    body = _plain({k: v for k, v in state.items() if k != STATE_HASH})
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def _check_state(meta: Any, where: str) -> None:
    """Raise ``ValueError`` unless ``meta`` (parsed ``state.json``) has a checkpoint's keys and types."""
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: state.json holds a {type(meta).__name__}, not a checkpoint's state (corrupt)")
    if STATE_HASH in meta and meta[STATE_HASH] != _state_digest(meta):
        raise ValueError(f"{where}: state.json does not match its recorded sha256 (corrupt)")
    for key, kind in STATE_TYPES.items():
        if key not in meta and key in OPTIONAL_STATE_KEYS:
            continue
        if key not in meta:
            raise ValueError(f"{where}: state.json has no {key!r} (corrupt or not a checkpoint)")
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            raise ValueError(f"{where}: state.json {key}={meta[key]!r} is not a {kind.__name__} (corrupt)")
    files = meta["files"]
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise ValueError(f"{where}: state.json 'files' must map file names to sha256 strings (corrupt)")
    missing = [f"{group}.safetensors" for group in REQUIRED_GROUPS if f"{group}.safetensors" not in files]
    if missing:
        raise ValueError(f"{where}: state.json lists no {missing} (corrupt or not a checkpoint)")
    optimizer = meta["optimizer"]
    if not isinstance(optimizer.get("param_groups"), list) or not isinstance(optimizer.get("scalars"), dict):
        raise ValueError(f"{where}: state.json 'optimizer' lacks param_groups / scalars (corrupt)")


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Read and verify one checkpoint folder: every file against its sha256, ``state.json`` against its
    own hash and a checkpoint's keys and types. ``ValueError`` names what is missing or corrupt."""
    path = Path(path)
    where = f"checkpoint {str(path)!r}"
    state_file = path / "state.json"
    if not state_file.is_file():
        raise ValueError(f"{where} has no state.json: it is incomplete or not a checkpoint folder")
    try:
        meta = json.loads(state_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{where}: state.json is corrupt ({err})") from err
    _check_state(meta, where)
    groups = {}
    for name, digest in meta["files"].items():
        file = path / name
        if not file.is_file():
            raise ValueError(f"{where} is missing {name}")
        if _sha256(file) != digest:
            raise ValueError(f"{where}: {name} does not match its recorded sha256 (corrupt)")
        groups[name.removesuffix(".safetensors")] = load_safetensors(file)
    for group, keys in REQUIRED_GROUPS.items():
        absent = [key for key in keys if key not in groups[group]]
        if absent:
            raise ValueError(f"{where}: {group}.safetensors has no {absent} (corrupt or not a checkpoint)")
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
        except (ValueError, OSError) as err:  # anything that does not read back as a checkpoint
            log.warning("skipping corrupt checkpoint: %s", err)
            print(f"warning: skipping corrupt checkpoint {path.name}: {err}")
    raise ValueError(f"--resume latest: every checkpoint in {str(checkpoint_root(output_dir))!r} is corrupt")


def _plain(value: Any) -> Any:
    """``value`` as state.json holds it (tuples become lists), for comparing a checkpoint's config with a new one."""
    return json.loads(json.dumps(value))


def config_changes(
    saved: dict[str, Any], config: DistillConfig, allow_change: bool = False
) -> list[tuple[str, Any, Any]]:
    """The fields (dotted names) where ``config`` differs from ``saved``, a checkpoint's config, as
    ``(name, checkpoint value, new value)`` sorted by name.

    Raises ``ValueError`` naming each field with both values when one of :data:`UNLOADABLE_FIELDS`
    differs (always), or, unless ``allow_change``, any field outside :data:`RESUMABLE_FIELDS`.
    """
    old, new = dotted_values(saved), dotted_values(config.to_dict())
    changes = [
        (name, _plain(old[name]), _plain(new[name]))
        for name in sorted(new)
        if name in old and _plain(old[name]) != _plain(new[name])
    ]

    def listed(items: list[tuple[str, Any, Any]]) -> str:
        return "; ".join(f"{name}: {a!r} in the checkpoint, {b!r} now" for name, a, b in items)

    unloadable = [c for c in changes if c[0] in UNLOADABLE_FIELDS]
    if unloadable:
        keep = ", ".join(f"{name}={a!r}" for name, a, _ in unloadable)
        raise ValueError(
            "cannot resume: the checkpoint's LoRA tensors were made with other names or shapes "
            f"({listed(unloadable)}). "
            f"Resume with the checkpoint's values ({keep}), or start a new run "
            "(another output_dir, or overwrite=True / CLI --overwrite to move the old run aside)"
        )
    locked = [c for c in changes if c[0] not in RESUMABLE_FIELDS]
    if locked and not allow_change:
        raise ValueError(
            f"resuming would change how the checkpoint was trained: {listed(locked)}. "
            "Resume with the checkpoint's values, start a new run (another output_dir), or pass "
            "allow_config_change=True (CLI --allow-config-change) to continue with the new values. "
            f"Fields a resume may change freely: {sorted(RESUMABLE_FIELDS)}"
        )
    return changes


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (safetensors) and JSON metadata."""
    sd = opt.state_dict()
    tensors, scalars, seen = {}, {}, set()

    def split(prefix: str, state: dict) -> None:
        for key, value in state.items():
            if isinstance(value, dict):  # bitsandbytes nests its 8-bit state in one dict per parameter
                split(f"{prefix}{key}.", value)
            elif isinstance(value, torch.Tensor):  # (and shares its 256-entry code books: stored per key)
                shared = value.untyped_storage().data_ptr() in seen
                seen.add(value.untyped_storage().data_ptr())
                tensors[f"{prefix}{key}"] = value.clone() if shared else value
            else:
                scalars[f"{prefix}{key}"] = value

    for pid, state in sd["state"].items():
        split(f"{pid}.", state)
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Inverse of :func:`optimizer_to_tensors` (dotted keys ``pid.key`` or ``pid.group.key``)."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        pid, *path, name = key.split(".")
        where = state.setdefault(int(pid), {})
        for part in path:
            where = where.setdefault(part, {})
        where[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
