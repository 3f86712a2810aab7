"""The model card of a run folder (``OUT/README.md``) and how a run's LoRA is used (:func:`run_usage`).

A finished run writes its card after the calibration: the LoRA strength per step count, the quality
measured by the calibration, a validation grid when there is one, and how to sample it (for a diffusers
run: the ``scfm export`` command, then the diffusers snippet and the ComfyUI settings; for a built-in
model: scfm's Python API). ``scfm export --format diffusers`` writes the same kind of card next to the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scfm.export import LoraUsage
from scfm.model_card import CardInputs, QualityTable, calibration_quality, read_card_header, write_card
from scfm.train.config import DistillConfig
from scfm.train.run_folder import CALIBRATION_FILE
from scfm.train.sources import cache_path, is_diffusers_teacher, model_path

CARD_FILE = "README.md"
VALIDATION_DIR = "validation"


def run_usage(run_dir: Path, result: Any, config: DistillConfig, weights: str) -> LoraUsage:
    """How to use the run's LoRA copy ``weights``: the calibrated strengths (only for the run's final weights,
    which they were measured for), the family's sampling shift, the guidance it was distilled for."""
    from scfm.data.cache_store import read_meta
    from scfm.distilled import read_saved_config

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


def example_prompt(config: DistillConfig, default: str = CardInputs.example_prompt) -> str:
    """The first prompt of the run's teacher cache (a prompt the LoRA was distilled on), else ``default``."""
    from scfm.data.cache_store import INDEX_FILE

    try:
        with open(cache_path(config) / INDEX_FILE, encoding="utf-8") as handle:
            prompt = json.loads(handle.readline()).get("prompt", "")
    except (OSError, ValueError, AttributeError):
        return default
    return prompt if isinstance(prompt, str) and prompt.strip() else default


def run_quality(run_dir: Path) -> QualityTable | None:
    """The quality table of the run's own calibration (``calibration.json``), None without one."""
    path = run_dir / CALIBRATION_FILE
    try:
        return calibration_quality(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def newest_validation_grid(run_dir: Path) -> Path | None:
    """The newest ``validation/*.png`` of the run (teacher and student rows), None without one."""
    grids = sorted((run_dir / VALIDATION_DIR).glob("*.png"))
    return grids[-1] if grids else None


def write_run_card(run_dir: str | Path, result: Any, config: DistillConfig) -> Path:
    """Write ``run_dir/README.md`` for the finished run ``result`` (its final weights); returns the path."""
    run_dir = Path(run_dir)
    grid = newest_validation_grid(run_dir)
    quality = run_quality(run_dir)
    grid_name = grid.relative_to(run_dir).as_posix() if grid else None
    if is_diffusers_teacher(config):
        usage = run_usage(run_dir, result, config, config.final_weights)
        export_dir = run_dir / "export"
        command = f"scfm export --run {run_dir} --format diffusers --out {export_dir}"
        inputs = CardInputs(
            usage,
            type(result.model),
            str(export_dir),
            "pytorch_lora_weights.safetensors",
            example_prompt=example_prompt(config),
            quality=quality,
            grid=grid_name,
            before_snippet=[
                f"Write the diffusers file first: `{command}` (bf16; it gets its own card), or sample the run as it "
                f"is with `scfm sample --run {run_dir}`.",
                "",
            ],
        )
        base = model_path(config)
        return write_card(run_dir / CARD_FILE, inputs, read_card_header(base) if Path(base).is_dir() else None)
    usage = LoraUsage(
        architecture=f"scfm-{config.teacher.split(':')[0]}",
        base_model=config.teacher,
        rank=config.lora.rank,
        alpha=config.lora.alpha,
        lora_scales=dict(result.lora_scales),
        shift=1.0,
        guidance=0.0,
        cfg_mode=None,
        final_weights=config.final_weights,
    )
    builtin = type(result.model).__module__.startswith("scfm.models.")
    if not builtin:
        usage.architecture, usage.base_model = "scfm-user-model", type(result.model).__name__
    snippet = builtin_snippet(run_dir, config) if builtin else user_model_snippet(run_dir, type(result.model).__name__)
    inputs = CardInputs(usage, None, str(run_dir), "", quality=quality, grid=grid_name, python_snippet=snippet)
    return write_card(run_dir / CARD_FILE, inputs)


def builtin_snippet(run_dir: Path, config: DistillConfig) -> str:
    """scfm's Python API sampling a run of a built-in teacher (``scfm.sample`` applies the calibrated strength)."""
    if config.data == "digits":
        noise, cond = "torch.randn(10, 1, 8, 8)", ", label=torch.arange(10)"
    else:
        noise, cond = "torch.randn(1000, 2)", ""
    return "\n".join(
        [
            "import torch",
            "import scfm",
            "from scfm.train.run_folder import load_run",
            "",
            f"student, config = load_run({str(run_dir)!r})  # the built-in teacher with the run's LoRA",
            f"noise = {noise}",
            f"x0 = scfm.sample(student, noise, steps=4{cond})  # at the calibrated LoRA strength for 4 steps",
        ]
    )


def user_model_snippet(run_dir: Path, model_class: str) -> str:
    """scfm's Python API loading the run onto a fresh copy of the user's own model."""
    return "\n".join(
        [
            "import scfm",
            "",
            f"teacher = ...  # a fresh {model_class} with the pretrained weights this run was distilled from",
            f"student = scfm.load({str(run_dir)!r}, teacher)",
            "x0 = scfm.sample(student, noise, steps=4, **cond)  # at the calibrated LoRA strength for 4 steps",
        ]
    )
