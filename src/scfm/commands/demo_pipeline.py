"""`scfm demo --model flux-digits | sd3-digits`: the real diffusers path on a miniature pipeline, end to end.

The steps a Flux or SD3 user runs, through the same library calls as the commands:

1. ``scfm generate-data``: the shipped teacher pipeline samples every digit prompt (32 steps) into
   ``OUT/cache`` (a rerun with the same settings reuses it).
2. ``scfm distill`` from that cache with the family's preset scaled down
   (:func:`scfm.models.miniature.demo_config`) into ``OUT/run``; the run calibrates its LoRA scale per
   step count on a held-out cache batch (paired MSE to the teacher) by itself.
3. ``scfm export --format diffusers`` into ``OUT/export``.
4. A fresh pipeline loads that file with ``load_lora_weights`` and is sampled at 1, 2, 3, 4, 8 steps by
   :func:`scfm.pipelines.sampling.sample_pipeline` (what ``scfm sample`` runs), decoded by the pipeline's
   VAE and scored with the digits classifier (FD and class accuracy against the real digits, as the
   default demo): at the run's own automatic scales (rows ``student``: what ``scfm sample --run`` uses), at
   scales chosen as the default demo chooses them (FD to the held-out digits on calibration noise:
   ``student_fd_scales``) and at scale 1 (``student_scale1``). The teacher (no LoRA) is scored on the
   same grid at 1, 2, 3, 4, 8 and 32 steps, all at the family's default sampling shift.
5. ``latent_check``: the exported file in the fresh pipeline against scfm's own Euler sampling of the
   run (``scfm.sample``) on the same noise, max abs difference of the latents.

Writes ``metrics.json`` (the default demo's schema), ``grid_steps{n}.png``, ``fd_vs_steps.png``,
``training.png`` and ``report.md``.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from scfm.calibration import ScaleCalibration, calibrate_lora_scales
from scfm.data.cache_inputs import Bucket
from scfm.data.cache_writer import GenerateConfig, generate_cache
from scfm.distilled import DistilledModel
from scfm.eval.metrics import DigitsEvaluator
from scfm.eval.plots import plot_quality_vs_steps, plot_training, save_comparison_grid
from scfm.fileio import atomic_write_json, atomic_write_text
from scfm.models.adapters import VelocityAdapter, load_pipeline
from scfm.models.miniature import (
    DEMO_TEACHER_GUIDANCE,
    IMAGE_SIZE,
    PROMPT_TEMPLATES,
    demo_config,
    digits_prompt,
    rgb_to_digits,
    shipped_pipeline_path,
)
from scfm.pipelines.lora import load_lora
from scfm.pipelines.sampling import resolve_shift, sample_pipeline
from scfm.sampling import sample
from scfm.train.config import CACHE_PREFIX, DIFFUSERS_PREFIX, DistillConfig
from scfm.train.loop import distill
from scfm.train.sources import build_data, build_teacher

STEP_COUNTS = (1, 2, 3, 4, 8)
TEACHER_REFERENCE_STEPS = 32
EVAL_SEED = 1234
"""Noise seeds of the evaluation rows: ``EVAL_SEED + i`` for sample i (the run calibrates on its own noise)."""
PER_PROMPT = 34
"""Teacher samples per prompt in the cache: 30 prompts (10 digits x 3 paraphrases) x 34 = 1020 samples."""
CALIBRATION_SEED = 4321
"""Noise seeds of the demo's FD calibration (``CALIBRATION_SEED + i``); the evaluation uses ``EVAL_SEED``."""
CALIBRATION_SAMPLES = 500
"""Samples per scale tried by :func:`calibrate_by_fd`."""
CHECK_ROWS = 8
"""Samples of the exported-LoRA vs scfm-sampling check."""


def _prompts_file(out: Path) -> Path:
    lines = [digits_prompt(d, v) for d in range(10) for v in range(len(PROMPT_TEMPLATES))]
    path = out / "prompts.txt"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def digit_prompts(samples: int) -> tuple[list[str], torch.Tensor]:
    """``samples // 10`` canonical prompts per digit, label-major, and their labels [N]."""
    labels = torch.arange(10).repeat_interleave(max(1, samples // 10))
    return [digits_prompt(int(d)) for d in labels], labels


def _generators(count: int, seed: int = EVAL_SEED) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(count)]


def sample_pipeline_digits(
    pipe: Any, prompts: list[str], steps: int, scale: float, shift: float, guidance: float, seed: int = EVAL_SEED
) -> torch.Tensor:
    """Gray digits [N, 1, 8, 8] in [-1, 1] from ``sample_pipeline`` in chunks of 250 (sample i: noise seed + i)."""
    out, gens = [], _generators(len(prompts), seed)
    for i in range(0, len(prompts), 250):
        images = sample_pipeline(
            pipe,
            prompts[i : i + 250],
            steps,
            lora_scale=scale,
            shift=shift,
            generator=gens[i : i + 250],
            height=IMAGE_SIZE,
            width=IMAGE_SIZE,
            guidance=guidance,
        )
        out.append(rgb_to_digits(images))
    return torch.cat(out)


def _row(model: str, steps: int, nfe: int, digits: torch.Tensor, labels: torch.Tensor, evaluator) -> dict:
    scores = evaluator.evaluate(digits, labels)
    return {
        "model": model,
        "solver": "euler",
        "steps": steps,
        "nfe": nfe,
        "fd": round(scores.fd, 4),
        "class_acc": round(scores.class_acc, 4),
    }


def latent_difference(
    pipe: Any,
    adapter_cls: type[VelocityAdapter],
    result: DistilledModel,
    steps: int,
    scale: float,
    shift: float,
    guidance: float,
    student_guidance: float,
) -> float:
    """Max abs difference between the fresh pipeline's latents (exported LoRA, ``sample_pipeline``) and
    ``scfm.sample`` of the run on the same noise and prompts (full-length text, the run's own adapter)."""
    prompts = [digits_prompt(d % 10) for d in range(CHECK_ROWS)]
    got = sample_pipeline(
        pipe,
        prompts,
        steps,
        lora_scale=scale,
        shift=shift,
        generator=_generators(CHECK_ROWS, 99),
        height=IMAGE_SIZE,
        width=IMAGE_SIZE,
        guidance=student_guidance,
        output="latents",
    )
    cond = adapter_cls.encode_prompts(pipe, prompts, "cpu")
    if "guidance" in adapter_cls.cond_keys:
        cond["guidance"] = torch.full((CHECK_ROWS,), float(guidance))
    noise = torch.cat([torch.randn(1, *got.shape[1:], generator=g) for g in _generators(CHECK_ROWS, 99)])
    want = sample(result, noise, steps=steps, shift=shift, lora_scale=scale, **cond)
    return float((got - want).abs().max())


def calibrate_by_fd(
    pipe: Any, shift: float, guidance: float, samples: int = CALIBRATION_SAMPLES, progress: bool = False
) -> ScaleCalibration:
    """LoRA scale per step count minimising FD to the 360 held-out digits (never scored against) of the loaded
    pipeline's samples on calibration noise (seed :data:`CALIBRATION_SEED`), as the default demo calibrates."""
    prompts, _ = digit_prompts(samples)
    heldout = DigitsEvaluator(reference="heldout")
    return calibrate_lora_scales(
        lambda n, scale: sample_pipeline_digits(pipe, prompts, n, scale, shift, guidance, CALIBRATION_SEED),
        lambda digits: heldout.evaluate(digits).fd,
        steps=STEP_COUNTS,
        progress=progress,
    )


def _distill_config(
    name: str, out: Path, cfg_mode: str | None, seed: int, max_steps: int | None, overrides: dict[str, Any] | None
) -> DistillConfig:
    fields: dict[str, Any] = {
        **demo_config(name, cfg_mode),
        "teacher": f"{DIFFUSERS_PREFIX}{shipped_pipeline_path(name)}",
        "data": f"{CACHE_PREFIX}{out / 'cache'}",
        "output_dir": str(out / "run"),
        "local_files_only": True,
        "device": "cpu",
        "seed": seed,
    }
    if max_steps is not None:
        fields["max_steps"] = max_steps
    fields.update(overrides or {})
    return DistillConfig.from_dict(fields).validate()


def run_pipeline_demo(
    name: str,
    out: str | Path,
    *,
    max_steps: int | None = None,
    eval_samples: int = 1000,
    seed: int = 0,
    cfg_mode: str | None = None,
    per_prompt: int = PER_PROMPT,
    calibration_samples: int = CALIBRATION_SAMPLES,
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict:
    """Run the whole miniature-pipeline demo of ``name`` into ``out``; returns the ``metrics.json`` content.

    ``overrides`` (dotted DistillConfig fields) apply over the demo's config, for benchmarks of its choices."""
    out = Path(out)
    start = time.perf_counter()
    config = _distill_config(name, out, cfg_mode, seed, max_steps, overrides)  # every field checked before any work
    guidance = DEMO_TEACHER_GUIDANCE[name]
    out.mkdir(parents=True, exist_ok=True)
    model = shipped_pipeline_path(name)
    gen = GenerateConfig(
        model=str(model),
        out=out / "cache",
        prompts=_prompts_file(out),
        steps=TEACHER_REFERENCE_STEPS,
        guidance=guidance,
        buckets=(Bucket(IMAGE_SIZE, IMAGE_SIZE),),
        per_prompt=per_prompt,
        shard_size=256,
        batch_size=128,
        seed=seed,
        dtype="fp32",
        device="cpu",
        local_files_only=True,
        progress=progress,
    )
    t0 = time.perf_counter()
    generate_cache(gen)
    cache_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = distill(build_teacher(config, "cpu"), build_data(config), config, progress=progress, overwrite=True)
    train_seconds = time.perf_counter() - t0
    from scfm.commands.export import export_run

    lora_file = export_run(
        out / "run", "diffusers", out / "export", weights=config.final_weights, dtype="fp32", force=True, card=False
    )
    pipe, adapter_cls = load_pipeline(model, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    shift = resolve_shift(adapter_cls, pipe, None, IMAGE_SIZE, IMAGE_SIZE)
    student_guidance = 0.0 if config.cfg_mode == "baked" and adapter_cls.true_cfg else guidance
    prompts, labels = digit_prompts(eval_samples)
    evaluator = DigitsEvaluator()
    rows, grids = [], {}
    teacher_nfe = adapter_cls.passes_per_step(guidance)
    for n in tqdm([*STEP_COUNTS, TEACHER_REFERENCE_STEPS], desc="scoring the teacher", disable=not progress):
        digits = sample_pipeline_digits(pipe, prompts, n, 0.0, shift, guidance)
        rows.append(_row("teacher", n, n * teacher_nfe, digits, labels, evaluator))
        grids[n] = [(f"teacher euler {n}", digits[:: max(1, len(prompts) // 20)])]
    load_lora(pipe, lora_file)
    calibration = calibrate_by_fd(pipe, shift, student_guidance, calibration_samples, progress)
    student_nfe = adapter_cls.passes_per_step(student_guidance)
    variants = (
        ("student", {n: result.lora_scales.get(n, 1.0) for n in STEP_COUNTS}),
        ("student_fd_scales", calibration.scales),
        ("student_scale1", dict.fromkeys(STEP_COUNTS, 1.0)),
    )
    for n in tqdm(STEP_COUNTS, desc="scoring the student", disable=not progress):
        for model, scales in variants:
            digits = sample_pipeline_digits(pipe, prompts, n, scales[n], shift, student_guidance)
            rows.append({**_row(model, n, n * student_nfe, digits, labels, evaluator), "lora_scale": scales[n]})
            if model == "student":
                grids[n].append((f"student euler {n}", digits[:: max(1, len(prompts) // 20)]))
    check = {
        n: latent_difference(
            pipe, adapter_cls, result, n, result.lora_scales.get(n, 1.0), shift, guidance, student_guidance
        )
        for n in (1, 4)
    }
    for n in STEP_COUNTS:
        save_comparison_grid(grids[n], out / f"grid_steps{n}.png")
    floor = evaluator.fd_floor()
    plot_quality_vs_steps(rows, out / "fd_vs_steps.png", floor=floor)
    plot_training(result.history, out / "training.png")
    metrics = {
        "model": name,
        "rows": rows,
        "fd_floor": round(floor, 4),
        "cache_seconds": round(cache_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - start, 1),
        "eval_samples": len(prompts),
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
        "config": config.to_dict(),
        "shift": shift,
        "teacher_guidance": guidance,
        "student_guidance": student_guidance,
        "lora_scales": {str(n): v for n, v in sorted(result.lora_scales.items())},
        "fd_lora_scales": {str(n): v for n, v in calibration.scales.items()},
        "fd_calibration": {
            str(n): {f"{k:g}": round(v, 4) for k, v in tried.items()} for n, tried in calibration.tried.items()
        },
        "latent_check": {str(n): d for n, d in check.items()},
        "export": str(lora_file),
        "history": result.history,
    }
    atomic_write_json(out / "metrics.json", metrics)
    _write_report(out, metrics)
    export_run(out / "run", "diffusers", out / "export", dtype="fp32", force=True, eval_dir=out)  # with its card
    return metrics


def _write_report(out: Path, metrics: dict) -> None:
    lines = [
        f"# scfm demo report: {metrics['model']}",
        "",
        f"Machine: {metrics['machine']}. Teacher cache {metrics['cache_seconds']:.0f} s, training "
        f"{metrics['train_seconds']:.0f} s ({metrics['config']['max_steps']} steps, batch "
        f"{metrics['config']['batch_size']}), total {metrics['total_seconds']:.0f} s.",
        f"Sampling shift {metrics['shift']:g} (the family default), teacher guidance {metrics['teacher_guidance']:g}, "
        f"student guidance {metrics['student_guidance']:g}. FD floor {metrics['fd_floor']:.3f}.",
        "",
        "| model | steps | NFE | FD | class acc | LoRA scale |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['steps']} | {r['nfe']} | {r['fd']:.3f} | {r['class_acc']:.3f} | "
        f"{r.get('lora_scale', '')} |"
        for r in metrics["rows"]
    ]
    lines += [
        "",
        "Rows `student`: the run's own automatic calibration (`run/calibration.json`: paired latent MSE to the "
        "teacher on a held-out cache batch and fresh noise), what `scfm sample --run` uses. Rows `student_fd_scales`: "
        f"scales chosen as the default demo chooses them, by FD to the 360 held-out digits on calibration noise (seed "
        f"{CALIBRATION_SEED}); every row is scored on seed {EVAL_SEED} against the training digits. "
        "`student_scale1`: scale 1.",
        "Exported LoRA in a fresh pipeline vs scfm's own sampling of the run, max abs latent difference: "
        + ", ".join(f"{n} steps {d:.2e}" for n, d in metrics["latent_check"].items())
        + ".",
        "",
        f"Files: `metrics.json`, `fd_vs_steps.png`, `grid_steps{{n}}.png`, `training.png`, `run/`, `export/` "
        f"({metrics['export']}), `cache/`.",
        "",
    ]
    atomic_write_text(out / "report.md", "\n".join(lines))
