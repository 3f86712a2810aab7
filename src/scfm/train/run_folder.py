"""Reading a finished run folder (``output_dir`` of ``scfm distill``): its config and its distilled model.

A run folder holds ``config.yaml``, ``checkpoints/``, ``metrics.jsonl`` and, once finished, what
:meth:`scfm.distilled.DistilledModel.save` writes: ``scfm_config.json`` (with the resolved
config), ``lora.safetensors`` (``final_weights``) and the named copies ``ema_slow``,
``ema_fast`` and ``student``.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from scfm.distilled import CONFIG_FILE, LORA_FILE, WEIGHT_FILES, DistilledModel, read_saved_config
from scfm.fileio import atomic_write_text
from scfm.train.checkpoint import (
    PREFIX,
    RESUMABLE_FIELDS,
    checkpoint_root,
    config_changes,
    list_checkpoints,
    resolve_resume,
)
from scfm.train.config import FINAL_WEIGHTS, DistillConfig
from scfm.train.engine import world
from scfm.train.sources import build_teacher, is_diffusers_teacher


def read_run_config(run_dir: str | os.PathLike, diffusers_only: bool = False) -> DistillConfig:
    """The run's config; raises when the run is unfinished (or, with ``diffusers_only``, not a diffusers run)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file() or not (run_dir / LORA_FILE).is_file():
        raise FileNotFoundError(
            f"{str(run_dir)!r} has no {CONFIG_FILE} / {LORA_FILE}: pass the output_dir of a finished scfm distill run "
            "(a run stopped early writes them when resumed to completion)"
        )
    config = DistillConfig.from_dict(read_saved_config(run_dir)["config"])
    if diffusers_only and not is_diffusers_teacher(config):
        raise ValueError(
            f"run {str(run_dir)!r} distilled teacher={config.teacher!r}; this command takes runs of diffusers models "
            "(teacher: diffusers:<model>) only"
        )
    return config


def load_run(
    run_dir: str | os.PathLike, weights: str | None = None, model_dtype: str | None = None
) -> tuple[DistilledModel, DistillConfig]:
    """(the run's distilled model with LoRA copy ``weights`` loaded, on the CPU; the run's config).

    ``weights`` None: the run's ``final_weights`` (the copy its LoRA-scale table was calibrated for).

    ``model_dtype`` overrides the dtype the frozen diffusers transformer is loaded in.
    """
    if weights is not None and weights not in FINAL_WEIGHTS:
        raise ValueError(f"weights={weights!r} must be one of {FINAL_WEIGHTS}")
    config = read_run_config(run_dir)
    weights = weights or config.final_weights
    if model_dtype is not None:
        config.model_dtype = model_dtype
    student = DistilledModel.load(run_dir, build_teacher(config))
    if weights in student.weights:
        student.use_weights(weights)
    elif weights != student.final_weights:
        have = sorted(student.weights) or [student.final_weights]
        raise ValueError(f"run {str(run_dir)!r} has no {weights} LoRA file; available: {have}")
    return student, config


# ---------------------------------------------------------------------- one run per folder

RESUME_HINT = "resume='latest' (CLI --resume latest)"

CALIBRATION_FILE = "calibration.json"
"""The run's LoRA-scale search: every scale tried per step count and the distance it measured."""

RUN_ENTRIES = (
    "checkpoints",
    "config.yaml",
    "metrics.jsonl",
    CONFIG_FILE,
    LORA_FILE,
    *WEIGHT_FILES.values(),
    "tensorboard",
    "validation",
    "wandb",
)
"""Entries of an ``output_dir`` that a run writes: a folder holding any of them belongs to a run."""


def claim_output_dir(output_dir: str | os.PathLike, overwrite: bool = False) -> Path | None:
    """Make sure a new run does not write into another run's folder.

    A missing folder, or one holding none of :data:`RUN_ENTRIES`, is fine (returns None). A used
    one raises ``FileExistsError`` listing the choices or, with ``overwrite``, is renamed to the
    sibling ``<output_dir>.old-<UTC time>`` (nothing is deleted) and made anew; returns that sibling.
    """
    folder = Path(output_dir)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"output_dir={str(folder)!r} is a file; pass a folder")
    used = [name for name in RUN_ENTRIES if (folder / name).exists()] if folder.is_dir() else []
    if not used:
        return None
    if not overwrite:
        raise FileExistsError(
            f"output_dir={str(folder)!r} already holds a run ({', '.join(used)}). Continue it with {RESUME_HINT}, "
            "pick another output_dir, or pass overwrite=True (CLI --overwrite) to move the old run aside to "
            f"{str(folder)!r}.old-<UTC time> (nothing is deleted)"
        )
    folder = folder.resolve()
    if Path.cwd().resolve().is_relative_to(folder):
        raise ValueError(
            f"output_dir={str(folder)!r} holds the current directory, so overwrite cannot move it aside; "
            "run from another directory or pick another output_dir"
        )
    stamp = utc_stamp()
    aside = folder.with_name(f"{folder.name}.old-{stamp}")
    for n in itertools.count(1):
        if not aside.exists():
            break
        aside = folder.with_name(f"{folder.name}.old-{stamp}-{n}")
    os.rename(folder, aside)  # one rename: nothing copied, nothing deleted
    folder.mkdir(parents=True)
    print(f"overwrite: moved the old run in {str(folder)!r} aside to {str(aside)!r}")
    return aside


def utc_stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def set_aside_newer_checkpoints(output_dir: str, step: int) -> None:
    """Move the checkpoints numbered past ``step`` (a continuation this resume replaces, or corrupt ones
    it skipped) into ``checkpoints/set-aside-<UTC time>/``: keep_checkpoints prunes by step number, and
    must never prune the resumed run's own checkpoints in their favour. Nothing is deleted."""
    newer = [path for path in list_checkpoints(output_dir) if int(path.name[len(PREFIX) :]) > step]
    if not newer:
        return
    folder = checkpoint_root(output_dir) / f"set-aside-{utc_stamp()}"
    folder.mkdir(exist_ok=True)
    for path in newer:
        os.rename(path, folder / path.name)
    print(f"resume: moved the checkpoints past step {step} ({', '.join(p.name for p in newer)}) aside to {folder}")


def claim_on_all_ranks(output_dir: str, overwrite: bool, device: torch.device) -> None:
    """:func:`claim_output_dir` on rank 0; every process raises when the folder is taken."""
    rank, size = world()
    error: Exception | None = None
    if rank == 0:
        try:
            claim_output_dir(output_dir, overwrite)
        except (FileExistsError, NotADirectoryError, ValueError) as err:
            error = err
    if size > 1:
        flag = torch.tensor([1.0 if error else 0.0], device=device)
        dist.all_reduce(flag)
        if flag.item() > 0 and error is None:
            error = FileExistsError(f"output_dir={output_dir!r} cannot take a new run (see the first process)")
    if error is not None:
        raise error


def trim_metrics(output_dir: str, step: int) -> None:
    """Drop the records of ``metrics.jsonl`` past ``step`` (a resume redoes those steps)."""
    path = Path(output_dir) / "metrics.jsonl"
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line + "\n")
    atomic_write_text(path, "".join(kept))


# ---------------------------------------------------------------------- resuming


@dataclass
class ResumePoint:
    """A checkpoint to resume from: its tensor groups, state, folder and the config fields that change."""

    groups: dict[str, dict[str, torch.Tensor]]
    meta: dict[str, Any]
    path: Path
    changes: list[tuple[str, Any, Any]]

    def inside(self, output_dir: str | None) -> bool:
        """Whether the checkpoint is one of ``output_dir``'s (the run continues in its own folder)."""
        return output_dir is not None and self.path.resolve().parent == checkpoint_root(output_dir).resolve()


def open_resume(config: DistillConfig, resume: str, allow_config_change: bool) -> ResumePoint:
    """Read the checkpoint ``resume`` names and compare its config with ``config`` (raises on a conflict)."""
    if config.output_dir is None and resume == "latest":
        raise ValueError("resume='latest' needs output_dir (where the checkpoints are)")
    groups, meta, path = resolve_resume(config.output_dir, resume)
    changes = config_changes(meta["config"], config, allow_config_change)
    if world()[0] == 0:
        for name, old, new in changes:
            how = "may change on resume" if name in RESUMABLE_FIELDS else "allow_config_change"
            print(f"resume: {name} {old!r} -> {new!r} ({how})")
    return ResumePoint(groups, meta, path, changes)
