"""The text-to-image evaluation driver and its figures: teacher-vs-student grids and a metrics plot.

:func:`evaluate_text_to_image` drives two ``generate(prompts, steps, seed)`` callables (teacher
and student) over a prompt list at several step counts, scores every set with the metrics of
:mod:`scfm.eval.t2i_metrics`, and writes ``t2i_metrics.json``, one teacher-vs-student PNG grid
per step count and a metrics-vs-NFE plot.
"""

from __future__ import annotations

import io
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from scfm.eval.t2i_inputs import iter_reference_folder, list_reference_images
from scfm.eval.t2i_metrics import (
    DEFAULT_CLIP,
    ClipScorer,
    FidFeatures,
    FrechetScorer,
    check_images,
    fid_warning,
    load_scorers,
)
from scfm.fileio import atomic_write_bytes, atomic_write_json

PathLike = str | os.PathLike

GenerateFn = Callable[[list[str], int, int], Tensor]
"""``generate(prompts, steps, seed) -> images [len(prompts), 3, H, W] in [0, 1]``; ``seed`` is that
of the first prompt of the batch (prompt j of the batch should use ``seed + j``)."""


# ------------------------------------------------------------------------------------ figures
def _fit(images: Tensor, max_side: int, min_side: int = 96) -> Tensor:
    """Resize images [B, 3, H, W] in [0, 1] for display: shrink (area filter) to a longer side
    <= ``max_side``, or enlarge tiny ones by a whole factor (nearest) to >= ``min_side``."""
    h, w = images.shape[-2:]
    if max(h, w) < min_side:
        factor = math.ceil(min_side / max(h, w))
        return images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    factor = max(h, w) / max_side
    if factor <= 1:
        return images
    size = (max(1, round(h / factor)), max(1, round(w / factor)))
    return torch.nn.functional.interpolate(images, size=size, mode="area")


def save_labelled_rows(
    rows: Sequence[tuple[str, Tensor]], path: PathLike, titles: Sequence[str] = (), max_side: int = 192
) -> Path:
    """PNG of labelled image rows: ``(label, images [K, 3, H, W] in [0, 1])`` per row, at 1:1 pixels.

    Images are shrunk so their longer side is at most ``max_side`` pixels (tiny ones enlarged);
    ``titles`` (e.g. the prompts, cut to the column width) head the columns. Written
    atomically; returns the path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not rows:
        raise ValueError("rows is empty; pass a list of (label, images [K, 3, H, W])")
    shrunk = [(label, _fit(check_images(images, f"images of row {label!r}").cpu(), max_side)) for label, images in rows]
    h = max(int(x.shape[-2]) for _, x in shrunk)
    w = max(int(x.shape[-1]) for _, x in shrunk)
    cols = max(int(x.shape[0]) for _, x in shrunk)
    pad = 4
    canvas = np.ones((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, 3), dtype=np.float32)
    for r, (_, images) in enumerate(shrunk):
        for c, img in enumerate(images):
            top, left = pad + r * (h + pad), pad + c * (w + pad)
            canvas[top : top + img.shape[-2], left : left + img.shape[-1]] = img.permute(1, 2, 0).numpy()
    dpi, label_px, title_px = 100, 150, 24 if titles else 0
    fig = Figure(figsize=((canvas.shape[1] + label_px) / dpi, (canvas.shape[0] + title_px) / dpi), dpi=dpi)
    ax = fig.add_axes(
        (
            label_px / (canvas.shape[1] + label_px),
            0,
            canvas.shape[1] / (canvas.shape[1] + label_px),
            canvas.shape[0] / (canvas.shape[0] + title_px),
        )
    )
    ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()
    for r, (label, _) in enumerate(rows):
        ax.text(-8, pad + r * (h + pad) + h / 2, label, ha="right", va="center", fontsize=9)
    for c, title in enumerate(list(titles)[:cols]):
        chars = max(4, (w + pad) // 5)  # about 5 px per character at font size 7
        text = title if len(title) <= chars else title[: chars - 3] + "..."
        ax.text(pad + c * (w + pad) + w / 2, -4, text, ha="center", va="bottom", fontsize=7)
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return atomic_write_bytes(path, buf.getvalue())


_METRIC_LABELS = {
    "clip": "CLIP score (higher is better)",
    "dfid": "dFID vs teacher (lower is better)",
    "fid": "FID vs reference (lower is better)",
}


def plot_t2i_metrics(rows: Sequence[dict[str, Any]], path: PathLike, teacher_steps: int) -> Path:
    """PNG with one panel per metric (clip, dfid, fid) against NFE: a line per model, the reference teacher dashed.

    ``rows`` are :func:`evaluate_text_to_image` rows; metrics that are None everywhere get no panel.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = [m for m in ("clip", "dfid", "fid") if any(r.get(m) is not None for r in rows)]
    if not metrics:
        raise ValueError("no row has a clip, dfid or fid value; nothing to plot")
    fig = Figure(figsize=(4.2 * len(metrics), 3.6))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        lines: dict[str, list[tuple[int, float]]] = {}
        for row in rows:
            if row.get(metric) is None:
                continue
            if row["model"] == "teacher" and row["steps"] == teacher_steps:
                ax.axhline(row[metric], color="gray", linestyle="--", label=f"teacher {teacher_steps} steps")
                continue
            lines.setdefault(str(row["model"]), []).append((int(row["nfe"]), float(row[metric])))
        for model, pts in sorted(lines.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=model)
        nfes = sorted({p[0] for pts in lines.values() for p in pts})
        if nfes:
            ax.set_xscale("log", base=2)
            ax.set_xticks(nfes)
            ax.set_xticklabels([str(n) for n in nfes])
        ax.set_xlabel("NFE per image")
        ax.set_title(_METRIC_LABELS[metric], fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return atomic_write_bytes(path, buf.getvalue())


# ------------------------------------------------------------------------------------- driver
@dataclass
class _SetResult:
    """Scores of one generated set (one model at one step count)."""

    clip: float | None
    dfid: float | None
    fid: float | None
    n: int
    seconds: float
    grid: Tensor
    size: tuple[int, int] = (0, 0)


def check_eval_plan(
    prompts: Sequence[str],
    steps_list: Sequence[int],
    teacher_steps: int,
    batch_size: int,
    grid_prompts: int,
    need_two: bool,
) -> None:
    """Raise ``ValueError`` naming the flag for an evaluation plan that cannot run (checked before any work)."""
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a non-empty list of strings")
    if need_two and len(prompts) < 2:
        raise ValueError(
            f"FID / dFID need at least 2 prompts (samples per set), got {len(prompts)}; "
            "add prompts or pass --fid-features none"
        )
    if not steps_list or any(int(s) < 1 for s in steps_list):
        raise ValueError(f"--steps {list(steps_list)} must be a non-empty list of step counts >= 1")
    if teacher_steps < 1:
        raise ValueError(f"--teacher-steps {teacher_steps} must be >= 1")
    if batch_size < 1:
        raise ValueError(f"--batch-size {batch_size} must be >= 1")
    if grid_prompts < 0:
        raise ValueError(f"--grid-prompts {grid_prompts} must be >= 0")


def _run_set(
    generate: GenerateFn,
    label: str,
    prompts: Sequence[str],
    steps: int,
    seed: int,
    batch_size: int,
    clip: ClipScorer | None,
    dfid: FrechetScorer | None,
    fid: FrechetScorer | None,
    grid_prompts: int,
    progress: bool,
    as_dfid_reference: bool = False,
    on_first_batch: Callable[[Tensor], None] | None = None,
) -> _SetResult:
    """Generate ``prompts`` in batches (the batch from prompt i on gets seed ``seed + i``) into the scorers."""
    from tqdm.auto import tqdm

    for scorer in (clip, fid):
        if scorer is not None:
            scorer.reset()
    if dfid is not None and not as_dfid_reference:
        dfid.reset()
    grid: list[Tensor] = []
    size = (0, 0)
    seconds = 0.0
    with tqdm(total=len(prompts), desc=label, unit="prompt", disable=not progress) as bar:
        for k, i in enumerate(range(0, len(prompts), batch_size)):
            batch = list(prompts[i : i + batch_size])
            start = time.perf_counter()
            images = check_images(generate(batch, steps, seed + i), f"{label} images", batch=len(batch)).cpu()
            seconds += time.perf_counter() - start  # generation only (.cpu() waits for the device)
            if k == 0:
                size = (int(images.shape[-2]), int(images.shape[-1]))
                if on_first_batch is not None:
                    on_first_batch(images)
            if clip is not None:
                clip.update(images, batch)
            if dfid is not None:
                (dfid.add_real if as_dfid_reference else dfid.add)(images)
            if fid is not None:
                fid.add(images)
            if sum(g.shape[0] for g in grid) < grid_prompts:
                grid.append(images[: grid_prompts - sum(g.shape[0] for g in grid)])
            bar.update(len(batch))
    return _SetResult(
        clip=clip.compute() if clip is not None else None,
        dfid=dfid.compute() if dfid is not None and not as_dfid_reference else None,
        fid=fid.compute() if fid is not None else None,
        n=len(prompts),
        seconds=seconds,
        grid=torch.cat(grid) if grid else torch.zeros(0, 3, *size),
        size=size,
    )


def _row(model: str, steps: int, nfe_per_step: int, result: _SetResult) -> dict[str, Any]:
    def r(x: float | None, floor: float | None = None) -> float | None:
        if x is None:
            return None
        return round(x, 4) if floor is None else max(floor, round(x, 4))  # FID < 0 is round-off

    return {
        "model": model,
        "steps": steps,
        "nfe": steps * nfe_per_step,
        "clip": r(result.clip),
        "dfid": r(result.dfid, 0.0),
        "fid": r(result.fid, 0.0),
        "n": result.n,
        "sec_per_image": round(result.seconds / max(1, result.n), 4),
    }


def _small_n_warnings(
    n_prompts: int, n_reference: int, dfid: FrechetScorer | None, fid: FrechetScorer | None
) -> list[str]:
    """Issue (and return) the FID conditioning warnings of :func:`fid_warning` for this plan."""
    messages = []
    if dfid is not None:
        messages.append(fid_warning(n_prompts, dfid.dim, f"dFID ({dfid.features.name})"))
    if fid is not None:
        messages.append(fid_warning(min(n_prompts, n_reference), fid.dim, f"FID vs reference ({fid.features.name})"))
    notes = [m for m in messages if m]
    for message in notes:
        warnings.warn(message, stacklevel=3)
    return notes


@dataclass
class _Report:
    """The json of :func:`evaluate_text_to_image`, rewritten atomically after every row."""

    out: Path
    notes: list[str]
    config: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    grids: dict[int, Path] = field(default_factory=dict)
    plot: Path | None = None
    start: float = field(default_factory=time.perf_counter)

    def add(self, model: str, steps: int, nfe_per_step: int, result: _SetResult) -> _SetResult:
        """Append the row of ``result`` and write the json (``complete`` false); returns ``result``."""
        self.rows.append(_row(model, steps, nfe_per_step, result))
        self.write(complete=False)
        return result

    def write(self, complete: bool) -> dict[str, Any]:
        content = {
            "rows": self.rows,
            "complete": complete,
            "config": self.config,
            "warnings": self.notes,
            "files": {
                "grids": {str(n): p.name for n, p in self.grids.items()},
                "plot": self.plot.name if self.plot else None,
            },
            "seconds": round(time.perf_counter() - self.start, 1),
        }
        atomic_write_json(self.out / "t2i_metrics.json", content)
        return content


def evaluate_text_to_image(
    teacher_generate: GenerateFn,
    student_generate: GenerateFn,
    prompts: Sequence[str],
    steps_list: Sequence[int],
    out_dir: PathLike,
    teacher_steps: int = 32,
    clip: str | PathLike | ClipScorer | None = DEFAULT_CLIP,
    fid_features: str | nn.Module | FidFeatures | None = "inception",
    inception_weights: PathLike | None = None,
    reference: PathLike | None = None,
    batch_size: int = 4,
    seed: int = 0,
    teacher_baseline: bool = True,
    grid_prompts: int = 4,
    teacher_nfe_per_step: int = 1,
    student_nfe_per_step: int = 1,
    device: str | torch.device = "cpu",
    progress: bool = True,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score a few-step student against its teacher on ``prompts``; write metrics, grids and a plot.

    Args:
        teacher_generate, student_generate: ``generate(prompts, steps, seed) -> images
            [len(prompts), 3, H, W] float in [0, 1]``; the same seed must give the same noise
            in both, so that paired samples are comparable.
        prompts: the evaluation prompts; every set generates each once. The batch starting at
            prompt i gets seed ``seed + i``: a callable that seeds its j-th prompt with
            ``seed + j`` gives prompt i the seed ``seed + i`` whatever the batch size.
        steps_list: student step counts, e.g. (1, 2, 4, 8).
        out_dir: receives ``t2i_metrics.json``, ``t2i_grid_steps{n}.png`` per n and
            ``t2i_metrics_vs_steps.png``.
        teacher_steps: step count of the teacher reference samples (dFID's reference).
        clip: CLIP folder / hub id / :class:`ClipScorer`, or None to skip CLIP scores.
        fid_features: ``'inception'``, ``'clip'``, ``'module:function'``, an ``nn.Module`` or
            :class:`FidFeatures`; None skips dFID and FID.
        inception_weights: Inception weights file for ``'inception'`` (None: torch-fidelity's download).
        reference: folder of real .png/.jpg images for FID (resized and center-cropped to the
            generated size); None skips the column.
        batch_size: prompts per generate call.
        teacher_baseline: also score the teacher at each student step count.
        grid_prompts: images per row of the comparison grids.
        teacher_nfe_per_step, student_nfe_per_step: network calls per step (2 with runtime CFG).
        device: where CLIP and the FID features run.
        config: extra fields recorded under ``"config"`` in the json.

    Returns the json content: ``rows`` (``{"model", "steps", "nfe", "clip", "dfid", "fid", "n",
    "sec_per_image"}``, model "teacher" or "student"; ``sec_per_image`` counts generation
    only), ``complete``, ``config``, ``warnings`` and ``files``. The json is rewritten after
    every row (``complete`` false until the end), so an interrupted run keeps its rows.
    Everything that can fail (models, weights, prompts, reference folder) is checked, and the
    small-n FID warnings are issued, before the first image is generated.
    """
    steps_list = [int(s) for s in steps_list]
    check_eval_plan(prompts, steps_list, teacher_steps, batch_size, grid_prompts, need_two=fid_features is not None)
    ref_files = list_reference_images(reference) if reference is not None else []
    if reference is not None and fid_features is None:
        raise ValueError("--reference needs FID features, but --fid-features is 'none'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scorer, features = load_scorers(clip, fid_features, inception_weights, device)
    dfid = FrechetScorer(features, device) if features is not None else None
    fid = FrechetScorer(features, device) if features is not None and reference is not None else None
    report = _Report(
        out,
        notes=_small_n_warnings(len(prompts), len(ref_files), dfid, fid),
        config={
            "teacher_steps": teacher_steps,
            "steps": steps_list,
            "n_prompts": len(prompts),
            "batch_size": batch_size,
            "seed": seed,
            "clip_model": scorer.name if scorer is not None else None,
            "fid_features": features.name if features is not None else None,
            "fid_feature_dim": dfid.dim if dfid is not None else None,
            "reference": str(reference) if reference is not None else None,
            "n_reference": len(ref_files) if reference is not None else None,
            **(config or {}),
        },
    )

    def load_reference(first: Tensor) -> None:  # FID's real side, at the generated size
        if fid is not None and reference is not None:
            for images in iter_reference_folder(
                reference, (first.shape[-2], first.shape[-1]), batch_size=max(batch_size, 16)
            ):
                fid.add_real(images)

    kw = dict(
        prompts=prompts,
        seed=seed,
        batch_size=batch_size,
        clip=scorer,
        dfid=dfid,
        fid=fid,
        grid_prompts=grid_prompts,
        progress=progress,
    )
    ref = _run_set(
        teacher_generate,
        f"teacher {teacher_steps} steps",
        steps=teacher_steps,
        as_dfid_reference=True,
        on_first_batch=load_reference,
        **kw,
    )
    report.config["image_size"] = list(ref.size)
    report.add("teacher", teacher_steps, teacher_nfe_per_step, ref)
    for n in steps_list:
        results = {}
        if teacher_baseline:
            results["teacher"] = report.add(
                "teacher", n, teacher_nfe_per_step, _run_set(teacher_generate, f"teacher {n} steps", steps=n, **kw)
            )
        results["student"] = report.add(
            "student", n, student_nfe_per_step, _run_set(student_generate, f"student {n} steps", steps=n, **kw)
        )
        if grid_prompts > 0:
            grid_rows = [
                (f"teacher {teacher_steps} steps", ref.grid),
                *((f"{model} {n} steps", r.grid) for model, r in results.items()),
            ]
            report.grids[n] = save_labelled_rows(
                grid_rows, out / f"t2i_grid_steps{n}.png", titles=list(prompts[:grid_prompts])
            )
    if scorer is not None or features is not None:
        report.plot = plot_t2i_metrics(report.rows, out / "t2i_metrics_vs_steps.png", teacher_steps)
    return report.write(complete=True)
