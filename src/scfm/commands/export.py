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
from scfm.export import LoraUsage
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
        help="cast (default: LoRA float32; fused: the run's model_dtype)",
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
) -> Path:
    """Write the run's LoRA copy ``weights`` (None: its ``final_weights``, the copy its LoRA-scale table is for)
    in format ``fmt``; returns the written file or folder.

    - ``diffusers``: ``out`` (a .safetensors path, or a folder that gets ``pytorch_lora_weights.safetensors``),
      loadable with ``pipe.load_lora_weights``; ``dtype`` casts (default float32, as trained).
    - ``comfyui``: kohya-style keys (``lora_transformer_...``) for ComfyUI; same ``out`` rule.
    - ``fused``: ``out`` is a folder; the transformer with ``lora_scale`` x LoRA merged, saved with
      ``save_pretrained`` (safetensors) in ``dtype`` (default: the run's ``model_dtype``).
      Load it with ``<TransformerClass>.from_pretrained(out)`` and pass it to the pipeline.

    An existing target file, or a non-empty fused folder, raises ``FileExistsError`` before any
    weight loads unless ``force``. Files are replaced atomically; a fused folder is written next to
    ``out`` and swapped in only once complete (the old one is deleted after the swap).
    """
    from scfm.export import export_diffusers_lora, export_kohya_lora, usage_metadata

    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format={fmt!r} must be one of {EXPORT_FORMATS}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} must be one of {sorted(DTYPES)}")
    read_run_config(run_dir, diffusers_only=True)  # a clear error before any weight loads
    target = _check_target(Path(out), fmt, force, Path(run_dir))
    if fmt == "fused":
        result, config = load_run(run_dir, weights, model_dtype=dtype)
        transformer = result.fuse(lora_scale).transformer
        target_dtype = DTYPES[dtype or config.model_dtype]
        if next(transformer.parameters()).dtype != target_dtype:
            transformer = transformer.to(target_dtype)
        return _write_folder(
            target, lambda folder: transformer.save_pretrained(folder, safe_serialization=True), force, Path(run_dir)
        )
    result, config = load_run(run_dir, weights)
    cast = DTYPES[dtype] if dtype is not None else None
    usage = run_usage(Path(run_dir), result, config, weights or config.final_weights)
    if fmt == "diffusers":
        usage.alpha = float(usage.rank)  # alpha / rank is baked into lora_B
        return export_diffusers_lora(result, target, dtype=cast, overwrite=force, metadata=usage_metadata(usage))
    return export_kohya_lora(result, target, dtype=cast, overwrite=force, metadata=usage_metadata(usage))


def run_usage(run_dir: Path, result: Any, config: Any, weights: str) -> LoraUsage:
    """How to use the run's LoRA copy ``weights``: the calibrated strengths (only for the run's final weights,
    which they were measured for), the family's sampling shift, the guidance it was distilled for."""
    from scfm.data.cache_store import read_meta
    from scfm.distilled import read_saved_config
    from scfm.train.sources import cache_path, model_path

    adapter = result.model
    scales = read_saved_config(run_dir).get("lora_scales", {}) if weights == config.final_weights else {}
    guidance = adapter.default_guidance
    if adapter.true_cfg:
        guidance = config.cfg_scale if config.cfg_mode == "runtime" else 0.0
    try:
        resolution = ",".join(read_meta(cache_path(config)).get("buckets", []))
    except (OSError, ValueError):
        resolution = ""
    return LoraUsage(
        architecture=adapter.modelspec_architecture(adapter.transformer.config),
        base_model=model_path(config),
        rank=config.lora.rank,
        alpha=config.lora.alpha,
        lora_scales={int(n): float(k) for n, k in scales.items()},
        shift=float(adapter.default_shift),
        guidance=float(guidance),
        cfg_mode=config.cfg_mode if adapter.true_cfg else None,
        final_weights=weights,
        resolution=resolution,
    )
