"""``scfm export``: a diffusers run's LoRA in the formats others load, or a fused transformer.

Export loads the run's transformer on the CPU (FLUX.1 in bf16: about 24 GB of RAM); the LoRA
formats need it only to check that every LoRA tensor fits the architecture.

Export never replaces what is there unless asked: an existing target file, or a non-empty
target folder, is refused (before any weight loads) unless ``--force``. Files are written
atomically; a fused folder is written into a temp sibling and swapped in only once complete.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scfm.commands._common import DIFFUSERS_WEIGHT_NAME, add_weights_flag, new_command
from scfm.devices import DTYPES
from scfm.distilled import CONFIG_FILE, EMA_FAST_FILE, EMA_SLOW_FILE, LORA_FILE, STUDENT_FILE
from scfm.fileio import atomic_write_bytes
from scfm.train.run_folder import load_run, read_run_config

EXPORT_FORMATS = ("diffusers", "comfyui", "fused")
COMFYUI_WEIGHT_NAME = "scfm_lora_comfyui.safetensors"
RUN_FILES = (LORA_FILE, STUDENT_FILE, EMA_FAST_FILE, EMA_SLOW_FILE, CONFIG_FILE)
"""Files of a run folder that an export never replaces, even with ``--force``."""


def register(sub: Any) -> None:
    e = new_command(sub, "export", help="write a diffusers run's LoRA for diffusers or ComfyUI, or a fused transformer")
    e.add_argument("--run", type=Path, required=True, help="output_dir of a finished scfm distill run")
    e.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    e.add_argument("--out", type=Path, required=True, help="a .safetensors file or a folder (fused: a folder)")
    add_weights_flag(e)
    e.add_argument(
        "--dtype",
        default=None,
        choices=tuple(DTYPES),
        help="cast (default: LoRA formats bf16, half the size of the float32 training copy; fused: the run's "
        "model_dtype)",
    )
    e.add_argument(
        "--eval",
        type=Path,
        default=None,
        help="diffusers format: a `scfm eval` (or `scfm demo`) output folder whose quality table and teacher-vs-"
        "student grid go into the model card (default: the run's calibration and validation grid)",
    )
    e.add_argument(
        "--lora-scale", type=float, default=1.0, help="fused only: LoRA scale merged into the weights (default 1.0)"
    )
    e.add_argument(
        "--force",
        action="store_true",
        help="replace an existing --out file or non-empty folder (a fused folder is swapped in once complete)",
    )
    e.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    path = export_run(
        args.run,
        args.format,
        args.out,
        weights=args.weights,
        dtype=args.dtype,
        lora_scale=args.lora_scale,
        force=args.force,
        eval_dir=args.eval,
    )
    print(f"wrote {path}")
    return 0


def _file_target(out: Path, default_name: str) -> Path:
    return out if out.suffix == ".safetensors" else out / default_name


def _check_target(out: Path, fmt: str, force: bool, run_dir: Path) -> Path:
    """The file (LoRA formats) or folder (fused) that ``fmt`` writes for ``out``, checked to be free.

    Raises ``FileExistsError`` naming the path for an existing file, or a non-empty folder for
    fused, unless ``force``; and, even with ``force``, for a target of the wrong kind (a folder
    where a file goes, a file or a link where the fused folder goes), a fused folder that holds the
    run or the working directory, or a file the run itself wrote (its LoRA copies, its config).
    """
    if fmt == "fused":
        if out.suffix == ".safetensors":
            raise ValueError(
                f"out={str(out)!r}: the fused format writes a transformer FOLDER (config.json + safetensors); "
                "pass a folder path"
            )
        for name, held in (("the run folder", run_dir), ("the working directory", Path.cwd())):
            if held.resolve().is_relative_to(out.resolve()):
                raise FileExistsError(
                    f"out={str(out)!r} holds {name} {str(held)!r}; replacing it would delete it: choose another path"
                )
        if out.is_symlink() or (out.exists() and not out.is_dir()):
            raise FileExistsError(
                f"out={str(out)!r} exists and is not a folder; the fused format writes a folder: choose another path"
            )
        if not force and out.is_dir() and any(out.iterdir()):
            raise FileExistsError(
                f"out={str(out)!r} is a folder that is not empty; pass --force to replace it (the old folder is "
                "removed only after the new one is complete), or choose another path"
            )
        return out
    target = _file_target(out, DIFFUSERS_WEIGHT_NAME if fmt == "diffusers" else COMFYUI_WEIGHT_NAME)
    if target.is_dir():
        raise FileExistsError(f"{str(target)!r} is a folder; choose a .safetensors file path or another folder")
    if target.resolve().parent == run_dir.resolve() and target.name in RUN_FILES:
        raise FileExistsError(
            f"{str(target)!r} is the run's own {target.name}; export to another path (e.g. outside the run folder)"
        )
    if not force and (target.exists() or target.is_symlink()):
        raise FileExistsError(f"{str(target)!r} already exists; pass --force to replace it, or choose another path")
    return target


def _write_folder(out: Path, write: Callable[[Path], None], force: bool, run_dir: Path) -> Path:
    """Make the folder ``out`` with ``write(folder)``, replacing an existing one only once the new one is complete.

    Order: ``write`` fills a temp sibling ``.<name>.tmp-<pid>-<ns>``; only when it returns is the old
    ``out`` (if any) renamed to ``<name>.old-<timestamp>``, the new folder renamed to ``out``, and then
    the old one deleted. A failing ``write`` removes the temp folder and leaves ``out`` untouched; a
    crash between the two renames leaves the old folder whole at ``<name>.old-<timestamp>``.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{time.time_ns()}")
    tmp.mkdir()
    try:
        write(tmp)
        _check_target(out, "fused", force, run_dir)  # again: something may have appeared while it was written
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        stamp = time.strftime("%Y%m%d-%H%M%S")
        old = out.with_name(f"{out.name}.old-{stamp}")
        number = 1
        while old.exists() or old.is_symlink():
            old, number = out.with_name(f"{out.name}.old-{stamp}-{number}"), number + 1
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        if old is not None:
            os.rename(old, out)  # put the old folder back
        raise
    if old is not None:
        shutil.rmtree(old)
    return out


def export_run(
    run_dir: str | Path,
    fmt: str,
    out: str | Path,
    weights: str | None = None,
    dtype: str | None = None,
    lora_scale: float = 1.0,
    force: bool = False,
    eval_dir: str | Path | None = None,
    card: bool = True,
) -> Path:
    """Write the run's LoRA copy ``weights`` (None: its ``final_weights``, the copy its LoRA-scale table is for)
    in format ``fmt``; returns the written file or folder.

    - ``diffusers``: ``out`` (a .safetensors path, or a folder that gets ``pytorch_lora_weights.safetensors``),
      loadable with ``pipe.load_lora_weights``; ``dtype`` casts (default bf16). With ``card`` a model card goes
      next to it (:func:`card_path`), its quality table and grid from ``eval_dir`` (a ``scfm eval`` or
      ``scfm demo`` folder) or else the run's calibration and newest validation grid.
    - ``comfyui``: kohya-style keys in the names ComfyUI maps for the family; same ``out`` rule, default bf16.
    - ``fused``: ``out`` is a folder; the transformer with ``lora_scale`` x LoRA merged, saved with
      ``save_pretrained`` (safetensors) in ``dtype`` (default: the run's ``model_dtype``).
      Load it with ``<TransformerClass>.from_pretrained(out)`` and pass it to the pipeline.

    Every safetensors file written carries the usage header (:func:`scfm.export.usage_metadata`).
    An existing target file or card, or a non-empty fused folder, raises ``FileExistsError`` before any
    weight loads unless ``force`` (a README.md that is not an scfm card is never replaced). Files are replaced
    atomically; a fused folder is written next to ``out`` and swapped in only once complete.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format={fmt!r} must be one of {EXPORT_FORMATS}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} must be one of {sorted(DTYPES)}")
    if eval_dir is not None and not Path(eval_dir).is_dir():
        raise FileNotFoundError(f"--eval {str(eval_dir)!r} is not a folder; pass a scfm eval / scfm demo output folder")
    read_run_config(run_dir, diffusers_only=True)  # a clear error before any weight loads
    target = _check_target(Path(out), fmt, force, Path(run_dir))
    card_file = card_path(target) if fmt == "diffusers" and card else None
    if card_file is not None:
        _check_card(card_file, force)
    if fmt == "fused":
        return _export_fused(Path(run_dir), target, weights, dtype, lora_scale, force)
    from scfm.export import export_diffusers_lora, export_kohya_lora, usage_metadata
    from scfm.train.run_card import run_usage

    result, config = load_run(run_dir, weights)
    cast = DTYPES[dtype or DEFAULT_LORA_DTYPE]
    usage = run_usage(Path(run_dir), result, config, weights or config.final_weights)
    if fmt == "comfyui":
        return export_kohya_lora(result, target, dtype=cast, overwrite=force, metadata=usage_metadata(usage))
    usage.alpha = float(usage.rank)  # alpha / rank is baked into lora_B
    path = export_diffusers_lora(result, target, dtype=cast, overwrite=force, metadata=usage_metadata(usage))
    if card_file is not None:
        _write_export_card(card_file, path, usage, type(result.model), Path(run_dir), config, eval_dir)
    return path


DEFAULT_LORA_DTYPE = "bf16"
"""Export dtype of the LoRA formats: half of float32's size (a rank-64 FLUX.1 LoRA on every target: ~0.65 GB)."""


def card_path(lora_file: Path) -> Path:
    """The model card of an exported file: ``README.md`` beside the default file name (the Hub's layout), else
    ``<file stem>.md`` (a file the user named gets its own card, not the folder's README)."""
    if lora_file.name == DIFFUSERS_WEIGHT_NAME:
        return lora_file.with_name("README.md")
    return lora_file.with_suffix(".md")


def _check_card(card_file: Path, force: bool) -> None:
    from scfm.model_card import is_scfm_card

    if not (card_file.exists() or card_file.is_symlink()):
        return
    if not is_scfm_card(card_file):
        raise FileExistsError(
            f"{str(card_file)!r} exists and is not an scfm model card; export to another folder (it is never replaced)"
        )
    if not force:
        raise FileExistsError(f"{str(card_file)!r} already exists; pass --force to replace it, or choose another path")


def _export_fused(run_dir: Path, target: Path, weights: str | None, dtype: str | None, strength: float, force: bool):
    """The fused folder: the merged transformer, each safetensors file's header saying how to sample it."""
    from scfm.export import usage_metadata
    from scfm.fileio import add_safetensors_metadata
    from scfm.train.run_card import run_usage

    result, config = load_run(run_dir, weights, model_dtype=dtype)
    usage = run_usage(run_dir, result, config, weights or config.final_weights)
    usage.lora_scales, usage.merged_strength = {}, float(strength)
    meta = usage_metadata(usage)
    transformer = result.fuse(strength).transformer
    target_dtype = DTYPES[dtype or config.model_dtype]
    if next(transformer.parameters()).dtype != target_dtype:
        transformer = transformer.to(target_dtype)

    def write(folder: Path) -> None:
        transformer.save_pretrained(folder, safe_serialization=True)
        for file in sorted(folder.glob("*.safetensors")):
            add_safetensors_metadata(file, meta)

    return _write_folder(target, write, force, run_dir)


def _write_export_card(card_file, lora_file, usage, adapter_cls, run_dir, config, eval_dir) -> Path:
    """The exported file's model card; its grid (from ``eval_dir`` or the run's validation) copied beside it."""
    from scfm.model_card import CardInputs, read_card_header, read_quality, recommended_steps, write_card
    from scfm.train.run_card import example_prompt, newest_validation_grid, run_quality
    from scfm.train.sources import model_path

    quality = read_quality(eval_dir) if eval_dir is not None else None
    grid = _eval_grid(Path(eval_dir), recommended_steps(usage)) if eval_dir is not None else None
    quality = quality or run_quality(run_dir)
    grid = grid or newest_validation_grid(run_dir)
    grid_name = None
    if grid is not None:
        copy = card_file.with_name(f"{card_file.stem}_teacher_vs_student.png")
        atomic_write_bytes(copy, grid.read_bytes())
        grid_name = copy.name
    inputs = CardInputs(
        usage,
        adapter_cls,
        str(lora_file.parent),
        lora_file.name,
        example_prompt=example_prompt(config),
        quality=quality,
        grid=grid_name,
    )
    base = model_path(config)
    return write_card(card_file, inputs, read_card_header(base) if Path(base).is_dir() else None)


def _eval_grid(eval_dir: Path, steps: int) -> Path | None:
    """The teacher-vs-student grid at ``steps`` of a ``scfm eval`` (``t2i_grid_steps{n}``) or ``scfm demo``
    (``grid_steps{n}``) folder; the largest step count's grid when there is none at ``steps``."""
    for name in (f"t2i_grid_steps{steps}.png", f"grid_steps{steps}.png"):
        if (eval_dir / name).is_file():
            return eval_dir / name
    grids = sorted(eval_dir.glob("*grid_steps*.png"), key=lambda p: int("".join(filter(str.isdigit, p.stem)) or 0))
    return grids[-1] if grids else None
