"""`scfm export` and `scfm sample` for runs on diffusers models (Flux / SD3).

A run folder (``output_dir`` of ``scfm distill``) holds ``scfm_config.json`` (the resolved
config, with ``teacher: diffusers:<model>``) and the LoRA copies written at the end of the run:
``lora.safetensors`` (``final_weights``), ``ema_slow.safetensors``, ``ema_fast.safetensors``,
``student.safetensors`` (:mod:`scfm.train.result`).

- :func:`export_run` loads the run's transformer (only it), attaches the chosen LoRA copy and
  writes it as a diffusers LoRA (``pipe.load_lora_weights``), a kohya/ComfyUI LoRA, or a fused
  transformer folder (``save_pretrained``, safetensors).
- :func:`sample_cli` loads the pipeline, loads a diffusers-format LoRA with
  ``pipe.load_lora_weights`` (for ``--run``, the run exported to a temporary file first, which
  reads the transformer once more on the CPU in the run's ``model_dtype``) and samples it on
  scfm's grid with :func:`scfm.pipeline_sampling.sample_pipeline`.

Export loads the transformer on the CPU (FLUX.1 in bf16: about 24 GB of RAM); the LoRA formats
need it only to check that every LoRA tensor fits the architecture.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from scfm.train.config import DistillConfig

EXPORT_FORMATS = ("diffusers", "comfyui", "fused")
WEIGHT_CHOICES = ("slow_ema", "fast_ema", "student")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
"""File name diffusers' ``load_lora_weights(folder)`` looks for by default."""
COMFYUI_WEIGHT_NAME = "scfm_lora_comfyui.safetensors"


def read_run_config(run_dir: str | Path) -> DistillConfig:
    """The run's config (``scfm_config.json``); raises when the run is unfinished or not a diffusers run."""
    from scfm.train.result import CONFIG_FILE, LORA_FILE

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file() or not (run_dir / LORA_FILE).is_file():
        raise FileNotFoundError(
            f"{str(run_dir)!r} has no {CONFIG_FILE} / {LORA_FILE}: pass the output_dir of a finished scfm distill run "
            "(a run stopped early writes them when resumed to completion)"
        )
    config = DistillConfig.from_dict(json.loads((run_dir / CONFIG_FILE).read_text())["config"])
    if not config.teacher.startswith("diffusers:"):
        raise ValueError(
            f"run {str(run_dir)!r} distilled teacher={config.teacher!r}; export/sample handle diffusers runs (teacher: diffusers:<model>) only"
        )
    return config


def load_run(run_dir: str | Path, weights: str = "slow_ema", model_dtype: str | None = None):
    """(DistilledModel around the run's transformer with LoRA copy ``weights`` loaded, config)."""
    from scfm.train.diffusers_run import build_teacher
    from scfm.train.result import DistilledModel

    if weights not in WEIGHT_CHOICES:
        raise ValueError(f"--weights={weights!r} must be one of {WEIGHT_CHOICES}")
    config = read_run_config(run_dir)
    if model_dtype is not None:
        config.model_dtype = model_dtype
    result = DistilledModel.load(run_dir, build_teacher(config))
    if weights in result.weights:
        result.use_weights(weights)
    elif weights != config.final_weights:
        raise ValueError(
            f"run {str(run_dir)!r} has no {weights} LoRA file; available: {sorted(result.weights) or [config.final_weights]}"
        )
    return result, config


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
        raise ValueError(f"--format={fmt!r} must be one of {EXPORT_FORMATS}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype={dtype!r} must be one of {sorted(DTYPES)}")
    out = Path(out)
    if fmt == "fused":
        if out.suffix == ".safetensors":
            raise ValueError(
                f"--out {str(out)!r}: the fused format writes a transformer FOLDER (config.json + safetensors); pass a folder path"
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


@dataclass
class SampleRequest:
    """Settings of `scfm sample` (each one a CLI flag)."""

    prompts: list[str]
    out: Path
    run: Path | None = None
    model: str | None = None
    lora: Path | None = None
    weights: str = "slow_ema"
    steps: int = 4
    lora_scale: float = 1.0
    shift: float = 1.0
    guidance: float | None = None
    seed: int = 0
    height: int | None = None
    width: int | None = None
    dtype: str = "auto"
    device: str = "auto"
    local_files_only: bool = False

    def validate(self) -> SampleRequest:
        if (self.run is None) == (self.model is None):
            raise ValueError(
                "give exactly one of --run RUN_DIR or --model PATH_OR_ID (with --lora FILE, or none for the teacher)"
            )
        if self.run is not None and self.lora is not None:
            raise ValueError("--lora goes with --model; --run uses the run's own LoRA (choose it with --weights)")
        if not self.prompts:
            raise ValueError("give at least one --prompt")
        if self.steps < 1:
            raise ValueError(f"--steps={self.steps} must be >= 1")
        if self.lora is not None and not Path(self.lora).is_file():
            raise FileNotFoundError(f"--lora {str(self.lora)!r} does not exist")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"--dtype={self.dtype!r} must be 'auto' or one of {sorted(DTYPES)}")
        return self


def sample_cli(req: SampleRequest) -> list[Path]:
    """Run `scfm sample`: returns the written PNG paths (``out``, or ``<stem>_<i>.png`` for several prompts)."""
    from scfm.models.adapters import load_pipeline
    from scfm.pipeline_sampling import load_lora, sample_pipeline, save_png

    req.validate()
    device = (
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if req.device == "auto"
        else torch.device(req.device)
    )
    dtype = DTYPES[req.dtype] if req.dtype != "auto" else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    with tempfile.TemporaryDirectory(prefix="scfm-sample-") as tmp:
        model, local_only, lora = req.model, req.local_files_only, req.lora
        if req.run is not None:
            config = read_run_config(req.run)
            model, local_only = (
                config.teacher.removeprefix("diffusers:").strip(),
                config.local_files_only or req.local_files_only,
            )
            lora = export_run(req.run, "diffusers", Path(tmp) / DIFFUSERS_WEIGHT_NAME, weights=req.weights)
        pipe, _ = load_pipeline(model, torch_dtype=dtype, local_files_only=local_only)
        pipe.to(device)
        if lora is not None:
            load_lora(pipe, lora)
        generators = [torch.Generator().manual_seed(req.seed + i) for i in range(len(req.prompts))]
        images = sample_pipeline(
            pipe,
            req.prompts,
            req.steps,
            lora_scale=req.lora_scale,
            shift=req.shift,
            generator=generators,
            height=req.height,
            width=req.width,
            guidance=req.guidance,
        )
    out = Path(req.out)
    paths = (
        [out]
        if len(images) == 1
        else [out.with_name(f"{out.stem}_{i}{out.suffix or '.png'}") for i in range(len(images))]
    )
    for image, path in zip(images, paths):
        save_png(
            image if image.dim() == 3 else torch.cat(list(image), dim=-1), path
        )  # a video [F, 3, H, W]: frames side by side
    return paths
