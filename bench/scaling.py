"""How the cost of an SCFM training step grows with model size and batch, against a plain LoRA flow-matching step.

    python bench/scaling.py             # full sweep (5-8 minutes on 2 CPU cores): tables, JSON, PNG, BENCHMARKS.md
    python bench/scaling.py --quick     # a tiny subset in seconds (what tests/test_scaling_bench.py runs)
    python bench/scaling.py --no-write  # do not touch BENCHMARKS.md, docs/scaling.png, bench/results/scaling.json
    python bench/scaling.py --json      # one JSON object on stdout (progress goes to stderr)

Both variants run through the same engine (:class:`~scfm.train.engine.Distiller`) on the CPU: SCFM is the preset
with ``plan.fm_ratio = 0``, the plain LoRA flow-matching fine-tune the same preset with ``fm_ratio = 1`` (every row
takes the target eps - x0, so no target pass runs). Same model, LoRA, batch and precision.

Models, built with random weights (the cost of a step does not depend on them):

- **digits DiT** (:class:`~scfm.models.digits_dit.DigitsDiT`, 8x8 digits, 16 tokens, 4 heads) under the `scfm demo`
  preset (:func:`~scfm.train.presets.digits_config`: fp32 base, bf16 target passes, LoRA on the preset targets).
  Widths 64 / 128 / 256 / 384 at the shipped depth 4, depths 2 / 4 / 8 at the shipped width 128, all at the demo's
  batch 256; batches 1 / 4 / 16 / 64 / 256 at the shipped size. The preset's LoRA is full rank (128 at width 128);
  the rank here is ``min(128, width)`` with alpha = rank, so it stays full rank at width 64 and is the preset's
  128 above.
- **tiny Flux**: a diffusers ``FluxTransformer2DModel`` (2 double + 2 single blocks, heads of 32, text width 64,
  guidance-distilled) of width 64 / 128 / 256 (2 / 4 / 8 heads) in scfm's ``FluxAdapter``, at batch 4; batches
  1 / 4 / 16 at width 128. Latents [B, 16, 16, 16] (64 image tokens after 2x2 packing), 16 text tokens, batches
  as the teacher cache yields them (:func:`memory_plan.make_batch`). Preset: ``configs/flux-dev.yaml`` (bf16 base,
  bf16 autocast, gradient checkpointing, the official LoRA targets) at LoRA rank 16, because that is what the
  memory plan simulates (``memory_plan.ModelSpec.distill_config``) and the plan check must compare the same step.
  With checkpointing the plain step is about 4 forward-equivalents (forward, recomputed forward, backward), so the
  theoretical ratio is 6/4 = 1.5 there, against 5/3 without (the digits DiT).

Per point:

- **time**: median SCFM and plain step time and the median of per-pair ratios, interleaved in one process
  (A, B, A, B, ...) after warm-up (:func:`cost.interleaved_times`); ms per optimizer step. Full run: 3 warm-up and
  9 timed pairs (7 for the largest points: digits width 256 and 384, depth 8); ``--quick``: 1 and 2.
- **memory**: the peak of live tensor bytes of one steady-state step (the second step: the AdamW moments exist),
  counted by :class:`memory_plan.LiveBytes` around a real step: every storage an operation creates adds its bytes,
  its death subtracts them. The tracker is on from before the model is built, so ``persistent`` (live before the
  step: base, LoRA, EMAs, weight-switch stash, AdamW moments) and ``peak`` are absolute. This is the counter the
  memory plan runs on fake tensors, so plan and measurement count the same thing and their difference is the
  simulation's alone (its expected-row split, the attention stand-in). How it compares with the profiler's
  allocation events (tests/test_memory_plan.py ``measured_step``) is in BENCHMARKS.md. Reported: SCFM peak / plain
  peak and the step-added ratio (peak - persistent) SCFM / (peak - persistent) plain.
- **plan** (Flux points): :func:`memory_plan.simulate_step` with ``cuda=False`` on a :class:`memory_plan.ModelSpec`
  of the same transformer, preset, rank and batch; its peak (and step-added bytes) against the measured ones. The
  digits DiT has no plan (the plan builds diffusers models from a config.json).

Fits (``numpy.polyfit``, degree 1): log(step time) against log(base parameter count) for each size sweep (digits
width, digits depth, Flux width) and against log(batch) for each batch sweep, SCFM and plain separately (t = a N^b:
the exponent b and R^2 in log space), and the time ratio linearly against log(N) (or log(batch)): a slope near 0
means the ratio stays flat as the model grows.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cost import THEORETICAL, interleaved_times
from memory_plan import DTYPES, ROOT, LiveBytes, ModelSpec, Setting, make_batch, simulate_step
from report import machine, write_json, write_section
from scfm.data.batches import DigitsBatches
from scfm.models.digits_dit import DigitsDiT, DigitsDiTConfig
from scfm.train.config import DistillConfig
from scfm.train.engine import Distiller
from scfm.train.presets import digits_config

CPU = torch.device("cpu")
PLOT = ROOT / "docs" / "scaling.png"
MB = 1e6

DIGITS_WIDTH, DIGITS_DEPTH, DIGITS_BATCH = 128, 4, 256
"""The shipped digits DiT (width 128, depth 4) and the demo's batch."""
DIGITS_MAX_RANK = 128
"""The digits preset's LoRA rank (full rank at width 128); points use ``min(width, DIGITS_MAX_RANK)``."""

FLUX_HEAD_DIM = 32
FLUX_CONFIG = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 2,
    "num_single_layers": 2,
    "attention_head_dim": FLUX_HEAD_DIM,
    "joint_attention_dim": 64,
    "pooled_projection_dim": 32,
    "guidance_embeds": True,
    "axes_dims_rope": (8, 12, 12),
}
"""The tiny Flux transformer's config without its head count (width = heads x 32); 16 latent channels packed 2x2."""
FLUX_PRESET = ROOT / "configs" / "flux-dev.yaml"
FLUX_RANK = 16
FLUX_PIXELS = 128
"""Image side in pixels: 16x16 latents at the spec's vae_scale 8, 64 image tokens after packing."""
FLUX_TEXT_TOKENS = 16
FLUX_WIDTH, FLUX_BATCH = 128, 4
"""The Flux point the batch sweep and the width sweep share."""

FLAT = 0.1
"""A ratio counts as flat over a sweep when its fitted change from the smallest to the largest point is under this."""

EngineFactory = Callable[[bool, int, torch.device], tuple[Distiller, Any]]
"""``make(scfm, batch, device) -> (engine, iterable of batches)``, as :func:`cost.interleaved_times` takes it."""


@dataclass(frozen=True)
class Point:
    """One measured model and batch: ``family`` 'digits' or 'flux'; ``width`` the hidden size; ``depth`` the
    digits DiT's blocks (Flux: fixed at 2 double + 2 single)."""

    family: str
    width: int
    depth: int
    batch: int

    @property
    def label(self) -> str:
        if self.family == "digits":
            return f"digits DiT w{self.width} d{self.depth}"
        return f"Flux w{self.width} ({self.width // FLUX_HEAD_DIM} heads)"


@dataclass(frozen=True)
class Sweep:
    """Points that differ in one thing: ``axis`` 'params' (width or depth) or 'batch'."""

    name: str
    axis: str
    points: tuple[Point, ...]


@dataclass(frozen=True)
class Budget:
    """Interleaved pairs per point: ``warmup`` untimed, then ``pairs`` timed (``large_pairs`` for points whose
    width x depth x batch is at least ``large_work``)."""

    warmup: int
    pairs: int
    large_pairs: int
    large_work: int

    def timed(self, point: Point) -> int:
        return self.large_pairs if point.width * point.depth * point.batch >= self.large_work else self.pairs


def digits(width: int = DIGITS_WIDTH, depth: int = DIGITS_DEPTH, batch: int = DIGITS_BATCH) -> Point:
    """A digits DiT point; the defaults are the shipped model at the demo's batch."""
    return Point("digits", width, depth, batch)


def flux(width: int = FLUX_WIDTH, batch: int = FLUX_BATCH) -> Point:
    """A tiny Flux point (2 double + 2 single blocks)."""
    return Point("flux", width, 2, batch)


def full_sweeps() -> list[Sweep]:
    """The full benchmark's sweeps (points shared between sweeps are measured once)."""
    return [
        Sweep("digits width", "params", tuple(digits(width=w) for w in (64, 128, 256, 384))),
        Sweep("digits depth", "params", tuple(digits(depth=d) for d in (2, 4, 8))),
        Sweep("digits batch", "batch", tuple(digits(batch=b) for b in (1, 4, 16, 64, 256))),
        Sweep("Flux width", "params", tuple(flux(width=w) for w in (64, 128, 256))),
        Sweep("Flux batch", "batch", tuple(flux(batch=b) for b in (1, 4, 16))),
    ]


def quick_sweeps() -> list[Sweep]:
    """Seconds: 2 digits widths and 2 batches at small batch, 1 Flux width (for the test)."""
    return [
        Sweep("digits width", "params", (digits(width=64, batch=16), digits(width=128, batch=16))),
        Sweep("digits batch", "batch", (digits(width=64, batch=4), digits(width=64, batch=16))),
        Sweep("Flux width", "params", (flux(),)),
    ]


FULL_BUDGET = Budget(warmup=3, pairs=9, large_pairs=7, large_work=256 * 4 * 256)
QUICK_BUDGET = Budget(warmup=1, pairs=2, large_pairs=2, large_work=0)


# ---------------------------------------------------------------------------- engines


def digits_preset(scfm: bool, width: int, batch: int) -> DistillConfig:
    """:func:`digits_config` with ``fm_ratio`` 0 (SCFM) or 1 (plain FM) and LoRA rank = alpha = min(width, 128)."""
    rank = min(width, DIGITS_MAX_RANK)
    overrides = {"plan.fm_ratio": 0.0 if scfm else 1.0, "lora.rank": rank, "lora.alpha": float(rank)}
    return digits_config(overrides, batch_size=batch).validate()


def digits_maker(width: int, depth: int) -> EngineFactory:
    """Engines on a random digits DiT of ``width`` x ``depth``; batches {"x0": [B, 1, 8, 8], "label": [B]}."""

    def make(scfm: bool, batch: int, device: torch.device) -> tuple[Distiller, DigitsBatches]:
        config = digits_preset(scfm, width, batch)
        torch.manual_seed(0)
        model = DigitsDiT(DigitsDiTConfig(dim=width, depth=depth)).to(device)
        if config.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        return Distiller(model, config, device), DigitsBatches(batch, seed=0)

    return make


def flux_spec(width: int, scfm: bool) -> ModelSpec:
    """The memory plan's description of the tiny Flux of ``width`` (= heads x 32) under the flux-dev preset."""
    config = {**FLUX_CONFIG, "num_attention_heads": width // FLUX_HEAD_DIM}
    overrides = {"plan.fm_ratio": 0.0 if scfm else 1.0}
    return ModelSpec(f"flux-w{width}", "flux", config, FLUX_PRESET, FLUX_TEXT_TOKENS, overrides=overrides)


def flux_setting(batch: int, checkpointing: bool) -> Setting:
    """Rank 16, 128x128 px (16x16 latents), ``batch`` rows."""
    return Setting(FLUX_RANK, FLUX_PIXELS, FLUX_PIXELS, batch=batch, checkpointing=checkpointing)


def flux_batches(spec: ModelSpec, setting: Setting) -> Iterator[dict[str, torch.Tensor]]:
    """Endless random batches as the teacher cache yields them: x0 [B, 16, 16, 16] fp32, prompt_embeds
    [B, 16, 64] bf16, pooled [B, 32] bf16, guidance [B]."""
    generator = torch.Generator().manual_seed(0)
    while True:
        yield make_batch(spec, setting, "cpu", generator)


def flux_maker(width: int) -> EngineFactory:
    """Engines on a random tiny Flux transformer of ``width`` in a ``FluxAdapter``, as the flux-dev preset loads it
    (bf16 weights, gradient checkpointing per the preset)."""

    def make(scfm: bool, batch: int, device: torch.device) -> tuple[Distiller, Iterator[dict[str, torch.Tensor]]]:
        from diffusers import FluxTransformer2DModel
        from diffusers.utils import logging as diffusers_logging

        from scfm.models.flux import FluxAdapter

        diffusers_logging.set_verbosity_error()  # `.to(bf16)` warns about fp32-kept modules; Flux has none
        spec = flux_spec(width, scfm)
        config = spec.distill_config(FLUX_RANK)
        torch.manual_seed(0)
        transformer = FluxTransformer2DModel(**spec.config).to(DTYPES[config.model_dtype])
        adapter = FluxAdapter(transformer).to(device).eval()
        if config.gradient_checkpointing:
            adapter.enable_gradient_checkpointing()
        engine = Distiller(adapter, config, device, seq_len_fn=adapter.seq_len)
        return engine, flux_batches(spec, flux_setting(batch, config.gradient_checkpointing))

    return make


def maker(point: Point) -> EngineFactory:
    return digits_maker(point.width, point.depth) if point.family == "digits" else flux_maker(point.width)


# ---------------------------------------------------------------------------- measurements


def parameter_counts(engine: Distiller) -> dict[str, int]:
    """Parameters of the frozen base (everything but LoRA) and of the LoRA (A and B)."""
    lora = sum(p.numel() for p in engine.params)
    return {"base_params": sum(p.numel() for p in engine.model.parameters()) - lora, "lora_params": lora}


def step_memory(make: EngineFactory, scfm: bool, batch: int) -> dict[str, int]:
    """Live tensor bytes around the second (steady-state) training step, counted by :class:`LiveBytes` from before
    the model is built: ``persistent`` (live before the step), ``peak`` (highest live during it, batch included)
    and the parameter counts."""
    gc.collect()
    with LiveBytes() as tracker:
        engine, data = make(scfm, batch, CPU)
        batches = iter(data)
        engine.train_step([next(batches)])
        engine.opt.zero_grad(set_to_none=True)
        gc.collect()
        persistent = tracker.live
        tracker.reset_peak()
        engine.train_step([next(batches)])
        peak = tracker.peak
        counts = parameter_counts(engine)
        del engine, batches, data
    return {"persistent": persistent, "peak": peak, **counts}


def plan_memory(point: Point, scfm: bool) -> dict[str, int]:
    """The memory plan's simulated step for a Flux point (``cuda=False``: what the CPU runs): bytes."""
    spec = flux_spec(point.width, scfm)
    checkpointing = spec.distill_config(FLUX_RANK).gradient_checkpointing
    memory, _ = simulate_step(spec, flux_setting(point.batch, checkpointing), cuda=False)
    return {"persistent": memory.persistent, "peak": memory.peak, "step": memory.step}


def relative(a: float, b: float) -> float:
    """a / b - 1."""
    return a / b - 1


def plan_check(point: Point, measured: dict[str, dict[str, int]]) -> dict[str, float | int]:
    """Plan against measurement for both variants: plan bytes and relative differences (plan / measured - 1) of
    the peak, the step-added bytes and the persistent bytes."""
    out: dict[str, float | int] = {}
    for name, scfm in (("scfm", True), ("fm", False)):
        plan, real = plan_memory(point, scfm), measured[name]
        out[f"{name}_peak_bytes"] = plan["peak"]
        out[f"{name}_step_bytes"] = plan["step"]
        out[f"{name}_peak_rel_diff"] = relative(plan["peak"], real["peak"])
        out[f"{name}_step_rel_diff"] = relative(plan["step"], real["peak"] - real["persistent"])
        out[f"{name}_persistent_rel_diff"] = relative(plan["persistent"], real["persistent"])
    return out


def measure(point: Point, budget: Budget) -> dict[str, Any]:
    """Everything measured at one point (times in ms, bytes, parameter counts; Flux: the plan check)."""
    make = maker(point)
    pairs = budget.timed(point)
    times = interleaved_times(make, point.batch, pairs, budget.warmup, CPU)
    memory = {"scfm": step_memory(make, True, point.batch), "fm": step_memory(make, False, point.batch)}
    scfm, fm = memory["scfm"], memory["fm"]
    row: dict[str, Any] = {
        "family": point.family,
        "label": point.label,
        "width": point.width,
        "depth": point.depth,
        "batch": point.batch,
        "base_params": scfm["base_params"],
        "lora_params": scfm["lora_params"],
        "warmup_pairs": budget.warmup,
        "timed_pairs": pairs,
        "scfm_ms": times["scfm_ms"],
        "fm_ms": times["fm_ms"],
        "time_ratio": times["ratio"],
        "scfm_persistent_bytes": scfm["persistent"],
        "scfm_peak_bytes": scfm["peak"],
        "fm_persistent_bytes": fm["persistent"],
        "fm_peak_bytes": fm["peak"],
        "memory_ratio": scfm["peak"] / fm["peak"],
        "step_memory_ratio": (scfm["peak"] - scfm["persistent"]) / (fm["peak"] - fm["persistent"]),
    }
    if point.family == "flux":
        row["plan"] = plan_check(point, memory)
    return row


# ---------------------------------------------------------------------------- fits


def r_squared(x: np.ndarray, y: np.ndarray, coefficients: np.ndarray) -> float | None:
    """Coefficient of determination of the polynomial ``coefficients`` on (x, y); None when y is constant."""
    total = float(((y - y.mean()) ** 2).sum())
    if total == 0:
        return None
    return 1 - float(((y - np.polyval(coefficients, x)) ** 2).sum()) / total


def power_fit(x: Sequence[float], y: Sequence[float]) -> dict[str, float | None]:
    """y = a x^b by least squares on log y = log a + b log x: exponent b, prefactor a, R^2 (in log space)."""
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    coefficients = np.polyfit(lx, ly, 1)
    return {
        "exponent": float(coefficients[0]),
        "prefactor": float(math.exp(coefficients[1])),
        "r2": r_squared(lx, ly, coefficients),
    }


def log_linear_fit(x: Sequence[float], y: Sequence[float]) -> dict[str, float | None]:
    """y = c + s log x by least squares: slope s (change of y per e-fold of x), intercept c, R^2."""
    lx, yy = np.log(np.asarray(x, float)), np.asarray(y, float)
    coefficients = np.polyfit(lx, yy, 1)
    return {"slope": float(coefficients[0]), "intercept": float(coefficients[1]), "r2": r_squared(lx, yy, coefficients)}


def sweep_x(sweep: Sweep, rows: Sequence[dict[str, Any]]) -> list[float]:
    """The sweep's x values: base parameter counts ('params') or batches ('batch')."""
    return [float(r["base_params"] if sweep.axis == "params" else r["batch"]) for r in rows]


def fit_sweep(sweep: Sweep, rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Power laws of SCFM and plain step time, and the time and memory ratios against log x; None under 2 points."""
    if len(rows) < 2:
        return None
    rows = sorted(rows, key=lambda r: sweep_x(sweep, [r])[0])
    x = sweep_x(sweep, rows)
    ratio = log_linear_fit(x, [r["time_ratio"] for r in rows])
    return {
        "sweep": sweep.name,
        "axis": sweep.axis,
        "x": x,
        "scfm": power_fit(x, [r["scfm_ms"] for r in rows]),
        "fm": power_fit(x, [r["fm_ms"] for r in rows]),
        "time_ratio": ratio,
        "time_ratio_change": ratio["slope"] * math.log(max(x) / min(x)),
        "memory_ratio": log_linear_fit(x, [r["memory_ratio"] for r in rows]),
        "ratio_range": (rows[0]["time_ratio"], rows[-1]["time_ratio"]),
    }


# ---------------------------------------------------------------------------- output


def _render(header: Sequence[str], body: Sequence[Sequence[str]], markdown: bool) -> str:
    """An aligned plain-text table, or a Markdown table (first column left, the rest right-aligned)."""
    if markdown:
        rule = "|---|" + "---:|" * (len(header) - 1)
        return "\n".join(["| " + " | ".join(header) + " |", rule] + ["| " + " | ".join(c) + " |" for c in body])
    widths = [max(len(h), *(len(c[i]) for c in body)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([line(header)] + [line(c) for c in body])


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def points_table(rows: Sequence[dict[str, Any]], markdown: bool = False) -> str:
    """One line per point: sizes, median times and ratio, peak live tensor MB of both variants and their ratios."""
    header = (
        "model",
        "batch",
        "params",
        "LoRA",
        "SCFM ms",
        "plain ms",
        "time ratio",
        "SCFM peak MB",
        "plain peak MB",
        "peak ratio",
        "step-added ratio",
    )
    body = [
        (
            r["label"],
            str(r["batch"]),
            f"{r['base_params'] / 1e6:.2f}M",
            f"{r['lora_params'] / 1e6:.2f}M",
            f"{r['scfm_ms']:.1f}",
            f"{r['fm_ms']:.1f}",
            f"{r['time_ratio']:.3f}",
            f"{r['scfm_peak_bytes'] / MB:.2f}",
            f"{r['fm_peak_bytes'] / MB:.2f}",
            f"{r['memory_ratio']:.3f}",
            f"{r['step_memory_ratio']:.3f}",
        )
        for r in rows
    ]
    return _render(header, body, markdown)


def plan_table(rows: Sequence[dict[str, Any]], markdown: bool = False) -> str:
    """Flux points: measured and planned peak (MB) of both variants, and plan / measured - 1 of peak and step."""
    header = (
        "model",
        "batch",
        "SCFM peak MB",
        "plan",
        "diff",
        "step diff",
        "plain peak MB",
        "plan",
        "diff",
        "step diff",
    )
    body = []
    for r in rows:
        if "plan" not in r:
            continue
        p = r["plan"]
        cells = [r["label"], str(r["batch"])]
        for name in ("scfm", "fm"):
            cells += [
                f"{r[f'{name}_peak_bytes'] / MB:.2f}",
                f"{p[f'{name}_peak_bytes'] / MB:.2f}",
                f"{p[f'{name}_peak_rel_diff']:+.1%}",
                f"{p[f'{name}_step_rel_diff']:+.1%}",
            ]
        body.append(cells)
    return _render(header, body, markdown) if body else ""


def fits_table(fits: Sequence[dict[str, Any]], markdown: bool = False) -> str:
    """One line per sweep: the power-law exponents with R^2, and the ratio's slope per e-fold of x."""
    header = ("sweep", "x", "SCFM b", "R2", "plain b", "R2", "ratio first -> last", "ratio slope", "R2")
    body = [
        (
            f["sweep"],
            "params" if f["axis"] == "params" else "batch",
            f"{f['scfm']['exponent']:.3f}",
            _fmt(f["scfm"]["r2"], ".3f"),
            f"{f['fm']['exponent']:.3f}",
            _fmt(f["fm"]["r2"], ".3f"),
            f"{f['ratio_range'][0]:.2f} -> {f['ratio_range'][1]:.2f}",
            f"{f['time_ratio']['slope']:+.3f}",
            _fmt(f["time_ratio"]["r2"], ".2f"),
        )
        for f in fits
    ]
    return _render(header, body, markdown)


def trend(fit: dict[str, Any]) -> str:
    """'stays flat', 'grows' or 'falls': the time ratio's fitted change over the sweep against :data:`FLAT`."""
    change = fit["time_ratio_change"]
    return "stays flat" if abs(change) < FLAT else "grows" if change > 0 else "falls"


def ratio_verdict(fit: dict[str, Any]) -> str:
    """One sentence on whether the time ratio grows, falls or stays flat over a sweep."""
    what = "parameters" if fit["axis"] == "params" else "batch"
    return (
        f"{fit['sweep']} ({what} {min(fit['x']):,.0f} -> {max(fit['x']):,.0f}): the ratio {trend(fit)} "
        f"({fit['ratio_range'][0]:.2f} -> "
        f"{fit['ratio_range'][1]:.2f}; fitted slope {fit['time_ratio']['slope']:+.3f} per e-fold, "
        f"{fit['time_ratio_change']:+.2f} over the sweep); step-time exponents SCFM {fit['scfm']['exponent']:.2f}, "
        f"plain {fit['fm']['exponent']:.2f}."
    )


def size_answer(fits: Sequence[dict[str, Any]]) -> str:
    """The answer to 'does the ratio grow with model size?', sweep by sweep."""
    by_trend: dict[str, list[str]] = {}
    for fit in fits:
        if fit["axis"] == "params":
            by_trend.setdefault(trend(fit), []).append(fit["sweep"])
    if not by_trend:
        return "No size sweep has two points."
    answer = "Yes" if "grows" in by_trend else "No"
    parts = [f"{name} in {', '.join(sweeps)}" for name, sweeps in by_trend.items()]
    return f"{answer}: the ratio " + "; ".join(parts) + "."


def memory_sentence(rows: Sequence[dict[str, Any]]) -> str:
    """The range of the SCFM / plain peak and step-added ratios over all points."""
    peak = [r["memory_ratio"] for r in rows]
    step = [r["step_memory_ratio"] for r in rows]
    text = (
        f"Memory: SCFM peak / plain peak {min(peak):.3f} to {max(peak):.3f} over all points; step-added bytes "
        f"{min(step):.3f} to {max(step):.3f}"
    )
    if max(abs(r - 1) for r in peak + step) < 0.01:
        return text + (
            " (the target passes run under inference mode and free their activations before the student's "
            "forward, so the student's saved activations set the peak in both)."
        )
    worst = max(rows, key=lambda r: r["step_memory_ratio"])
    return text + f"; the largest step-added ratio is at {worst['label']}, batch {worst['batch']}."


def summary(rows: Sequence[dict[str, Any]], fits: Sequence[dict[str, Any]]) -> str:
    """The paragraph of what the data say, written from the numbers."""
    plans = [r["plan"] for r in rows if "plan" in r]
    lines = [
        f"Does the SCFM / plain time ratio grow with model size? {size_answer(fits)} (A ratio counts as flat when "
        f"its fitted change over the sweep is under {FLAT}; theory: {THEORETICAL:.2f} without gradient "
        "checkpointing (digits), 1.50 with it (Flux).)",
        *(f"- {ratio_verdict(f)}" for f in fits),
        f"- {memory_sentence(rows)}",
    ]
    if plans:
        peak = max(abs(p[f"{n}_peak_rel_diff"]) for p in plans for n in ("scfm", "fm"))
        step = max(abs(p[f"{n}_step_rel_diff"]) for p in plans for n in ("scfm", "fm"))
        lines.append(
            f"- Memory plan against the measurement (Flux points): largest |plan / measured - 1| {peak:.1%} on the "
            f"peak, {step:.1%} on the step-added bytes."
        )
    return "\n".join(lines)


def plot(rows: Sequence[dict[str, Any]], sweeps: Sequence[Sweep], fits: Sequence[dict[str, Any]], path: Path) -> None:
    """Three panels: step time vs base parameters (SCFM and plain, fitted power laws), time and peak-memory ratio vs
    parameters, step time vs batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    by_sweep = {s.name: [rows_by_point(rows)[p] for p in s.points] for s in sweeps}
    fit_by = {f["sweep"]: f for f in fits}
    markers = dict(zip(by_sweep, "osD^v<>"))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for sweep in sweeps:
        data, marker = by_sweep[sweep.name], markers[sweep.name]
        x = sweep_x(sweep, data)
        time_ax = axes[0] if sweep.axis == "params" else axes[2]
        for variant, color, name in (("scfm", "C0", "SCFM"), ("fm", "C1", "plain")):
            time_ax.plot(x, [r[f"{variant}_ms"] for r in data], marker, color=color, label=f"{sweep.name}, {name}")
            if sweep.name in fit_by:
                f = fit_by[sweep.name][variant]
                grid = np.geomspace(min(x), max(x), 50)
                time_ax.plot(grid, f["prefactor"] * grid ** f["exponent"], "-", color=color, lw=0.8)
        if sweep.axis == "params":
            axes[1].plot(x, [r["time_ratio"] for r in data], marker + "-", color="C2", label=f"{sweep.name}, time")
            axes[1].plot(
                x, [r["memory_ratio"] for r in data], marker + "--", color="C3", label=f"{sweep.name}, peak mem"
            )
    axes[1].axhline(THEORETICAL, color="gray", lw=0.6, ls=":", label=f"theory {THEORETICAL:.2f} (no ckpt)")
    axes[1].axhline(1.5, color="gray", lw=0.6, ls="-.", label="theory 1.50 (ckpt)")
    titles = ("step time vs parameters", "SCFM / plain vs parameters", "step time vs batch")
    xlabels = ("base parameters", "base parameters", "batch")
    for ax, title, xlabel in zip(axes, titles, xlabels):
        ax.set_xscale("log")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.legend(fontsize=6)
    for ax in (axes[0], axes[2]):
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel("ms per step (median)")
    axes[1].set_ylabel("ratio (median of pairs; peak live bytes)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def rows_by_point(rows: Sequence[dict[str, Any]]) -> dict[Point, dict[str, Any]]:
    return {Point(r["family"], r["width"], r["depth"], r["batch"]): r for r in rows}


def markdown(result: dict[str, Any], command: str) -> str:
    """The BENCHMARKS.md section."""
    rows, fits = result["points"], result["fits"]
    plan = plan_table(rows, markdown=True)
    return "\n".join(
        [
            "## Scaling: SCFM step cost against plain LoRA FM by model size and batch (`bench/scaling.py`)",
            "",
            f"`{command}`. Machine: {result['machine']} (CPU). Same engine, model, "
            "LoRA, batch and precision; plain = `fm_ratio 1`. Times: medians of interleaved pairs after "
            f"{result['budget']['warmup']} warm-up pairs ({result['budget']['pairs']} timed pairs, "
            f"{result['budget']['large_pairs']} for the largest points); the ratio is the median of per-pair ratios. "
            "Memory: peak of live tensor bytes of one steady-state step (`memory_plan.LiveBytes` around a real step); "
            "step-added = peak - persistent. Digits DiT: `digits_config` (fp32 base, bf16 target passes, LoRA rank "
            "min(width, 128)), random weights. Flux: tiny `FluxTransformer2DModel` (2 + 2 blocks, heads of 32) in "
            "`FluxAdapter`, `configs/flux-dev.yaml` (bf16, gradient checkpointing) at LoRA rank 16, 16x16 latents, "
            "16 text tokens. Plot: `docs/scaling.png`.",
            "",
            points_table(rows, markdown=True),
            "",
            "Fits (`numpy.polyfit`): t = a N^b for each variant (b and R^2 in log space); the time ratio against "
            "log N (slope per e-fold of N; about 0 = flat).",
            "",
            fits_table(fits, markdown=True),
            "",
            *(
                [
                    "The memory plan (`memory_plan.simulate_step`, `cuda=False`) against the measured peak "
                    "(diff = plan / measured - 1; step = peak - persistent):",
                    "",
                    plan,
                    "",
                ]
                if plan
                else []
            ),
            summary(rows, fits),
        ]
    )


def print_tables(result: dict[str, Any]) -> None:
    print(f"machine: {result['machine']}")
    print("\n" + points_table(result["points"]))
    plan = plan_table(result["points"])
    if plan:
        print("\nmemory plan vs measured (diff = plan / measured - 1)\n" + plan)
    print("\n" + fits_table(result["fits"]))
    print("\n" + summary(result["points"], result["fits"]))


def run(sweeps: Sequence[Sweep], budget: Budget) -> dict[str, Any]:
    """Measure every distinct point of ``sweeps`` once, then fit each sweep."""
    points = list(dict.fromkeys(p for s in sweeps for p in s.points))
    rows = []
    for i, point in enumerate(points, 1):
        print(f"[{i}/{len(points)}] {point.label}, batch {point.batch}", file=sys.stderr, flush=True)
        rows.append(measure(point, budget))
    by_point = rows_by_point(rows)
    fits = [f for s in sweeps if (f := fit_sweep(s, [by_point[p] for p in s.points])) is not None]
    return {
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "theoretical_ratio": THEORETICAL,
        "budget": {"warmup": budget.warmup, "pairs": budget.pairs, "large_pairs": budget.large_pairs},
        "sweeps": [
            {"name": s.name, "axis": s.axis, "points": [p.label + f", batch {p.batch}" for p in s.points]}
            for s in sweeps
        ],
        "points": rows,
        "fits": fits,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny subset (seconds), for the test")
    parser.add_argument("--no-write", action="store_true", help="do not write BENCHMARKS.md, docs/, bench/results/")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args()
    sweeps, budget = (quick_sweeps(), QUICK_BUDGET) if args.quick else (full_sweeps(), FULL_BUDGET)
    result = run(sweeps, budget)
    result["quick"] = args.quick
    if not args.no_write:
        write_json("scaling", result)
        plot(result["points"], sweeps, result["fits"], PLOT)
        command = "python bench/scaling.py" + (" --quick" if args.quick else "")
        write_section("scaling", markdown(result, command))
    if args.json:
        print(json.dumps(result))
    else:
        print_tables(result)


if __name__ == "__main__":
    main()
