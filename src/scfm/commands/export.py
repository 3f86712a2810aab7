"""``scfm export``: a diffusers run's LoRA in the formats others load, or a fused transformer.

Export loads the run's transformer on the CPU (FLUX.1 in bf16: about 24 GB of RAM); the LoRA
formats need it only to check that every LoRA tensor fits the architecture.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from scfm.commands._common import DIFFUSERS_WEIGHT_NAME, add_weights_flag, new_command
from scfm.devices import DTYPES
from scfm.train.run_folder import load_run, read_run_config

EXPORT_FORMATS = ("diffusers", "comfyui", "fused")
COMFYUI_WEIGHT_NAME = "scfm_lora_comfyui.safetensors"


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
    e.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    path = export_run(
        args.run, args.format, args.out, weights=args.weights, dtype=args.dtype, lora_scale=args.lora_scale
    )
    print(f"wrote {path}")
    return 0


def _file_target(out: Path, default_name: str) -> Path:
    return out if out.suffix == ".safetensors" else out / default_name


def export_run(
    run_dir: str | Path,
    fmt: str,
    out: str | Path,
    weights: str = "slow_ema",
    dtype: str | None = None,
    lora_scale: float = 1.0,
) -> Path:
    """Write the run's LoRA copy ``weights`` in format ``fmt``; returns the written file or folder.

    - ``diffusers``: ``out`` (a .safetensors path, or a folder that gets ``pytorch_lora_weights.safetensors``),
      loadable with ``pipe.load_lora_weights``; ``dtype`` casts (default float32, as trained).
    - ``comfyui``: kohya-style keys (``lora_transformer_...``) for ComfyUI; same ``out`` rule.
    - ``fused``: ``out`` is a folder; the transformer with ``lora_scale`` x LoRA merged, saved with
      ``save_pretrained`` (safetensors) in ``dtype`` (default: the run's ``model_dtype``).
      Load it with ``<TransformerClass>.from_pretrained(out)`` and pass it to the pipeline.
    """
    from scfm.export import export_diffusers_lora, export_kohya_lora

    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format={fmt!r} must be one of {EXPORT_FORMATS}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} must be one of {sorted(DTYPES)}")
    read_run_config(run_dir, diffusers_only=True)  # a clear error before any weight loads
    out = Path(out)
    if fmt == "fused":
        if out.suffix == ".safetensors":
            raise ValueError(
                f"out={str(out)!r}: the fused format writes a transformer FOLDER (config.json + safetensors); "
                "pass a folder path"
            )
        result, config = load_run(run_dir, weights, model_dtype=dtype)
        transformer = result.fuse(lora_scale).transformer
        target = DTYPES[dtype or config.model_dtype]
        if next(transformer.parameters()).dtype != target:
            transformer = transformer.to(target)
        transformer.save_pretrained(out, safe_serialization=True)
        return out
    result, _ = load_run(run_dir, weights)
    cast = DTYPES[dtype] if dtype is not None else None
    if fmt == "diffusers":
        return export_diffusers_lora(result, _file_target(out, DIFFUSERS_WEIGHT_NAME), dtype=cast)
    return export_kohya_lora(result, _file_target(out, COMFYUI_WEIGHT_NAME), dtype=cast)
