"""PNG figures: image grids, labelled comparison grids, quality-vs-steps curves, 2-D scatters.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no global backend
switch), rendered to memory and written with :func:`scfm.fileio.atomic_write_bytes`, so a
crash never leaves a half-written PNG. Every function returns the written path.
"""

from __future__ import annotations

import io
import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from torch import Tensor

from scfm.data.digits import to_unit_range
from scfm.fileio import atomic_write_bytes

PathLike = str | os.PathLike


def _check_images(images: Tensor, name: str) -> None:
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(f"{name}.shape={tuple(images.shape)} must be [N >= 1, 1 or 3, H, W] in [-1, 1]")


def _tile(images: Tensor, nrow: int, pad: int = 1) -> np.ndarray:
    """Images [N, C, H, W] in [-1, 1] -> one array [rows*(H+pad)+pad, ...] in [0, 1]."""
    x = to_unit_range(images.detach().to("cpu", torch.float32)).numpy()
    n, c, h, w = x.shape
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    grid = np.ones((c, rows * (h + pad) + pad, cols * (w + pad) + pad), dtype=np.float32)
    for i in range(n):
        r, q = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, top : top + h, left : left + w] = x[i]
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def save_figure(fig: Figure, path: PathLike, dpi: int = 100) -> Path:
    """Render a matplotlib ``Figure`` (made without pyplot) to a PNG at ``path``, atomically."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def save_image_grid(images: Tensor, path: PathLike, nrow: int = 10, scale: int = 4) -> Path:
    """Save images [N, 1, H, W] (or [N, 3, H, W]) in [-1, 1] as one PNG grid.

    ``nrow`` images per row, 1-pixel white gaps, each pixel drawn as a ``scale`` x ``scale``
    block (nearest neighbour) so 8x8 digits stay legible.
    """
    _check_images(images, "images")
    if nrow < 1 or scale < 1:
        raise ValueError(f"nrow={nrow} and scale={scale} must both be >= 1")
    grid = _tile(images, nrow)
    grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
    buf = io.BytesIO()
    matplotlib.image.imsave(buf, grid, cmap="gray", vmin=0.0, vmax=1.0, format="png")
    return atomic_write_bytes(path, buf.getvalue())


def save_comparison_grid(rows: Sequence[tuple[str, Tensor]], path: PathLike) -> Path:
    """Save labelled rows of images, one row per ``(label, images [K, 1, H, W] in [-1, 1])``.

    E.g. ``[("teacher euler 2", a), ("student euler 2", b)]``: the label is written to the
    left of its row; rows may hold different numbers of images.
    """
    if len(rows) == 0:
        raise ValueError("rows is empty; pass a list of (label, images [K, 1, H, W])")
    for label, images in rows:
        _check_images(images, f"images of row {label!r}")
    max_k = max(images.shape[0] for _, images in rows)
    fig = Figure(figsize=(1.6 + 0.45 * max_k, 0.5 * len(rows) + 0.2))
    axes = fig.subplots(len(rows), 1, squeeze=False)[:, 0]
    for ax, (label, images) in zip(axes, rows):
        strip = _tile(images, nrow=images.shape[0])
        ax.imshow(strip, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_xlim(-0.5, max_k * (images.shape[-1] + 1) + 0.5)
        ax.set_axis_off()
        ax.text(-0.01, 0.5, label, transform=ax.transAxes, ha="right", va="center", fontsize=9)
    return save_figure(fig, path, dpi=120)


def plot_quality_vs_steps(
    rows: Sequence[Mapping[str, Any]],
    path: PathLike,
    metric: str = "fd",
    floor: float | None = None,
    log_y: bool = True,
) -> Path:
    """Plot ``metric`` against NFE, one line per (model, solver), as a PNG.

    Args:
        rows: dicts like ``{"model": "teacher", "solver": "euler", "steps": 4, "nfe": 4,
            "fd": 3.1, "class_acc": 0.99}`` (the ``metrics.json`` rows); rows whose metric
            is None are skipped.
        metric: the key to plot on the y axis.
        floor: drawn as a dashed horizontal line (e.g. the FD noise floor), if given.
        log_y: log-scale y axis; falls back to linear if any plotted value is <= 0.
    """
    lines: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for i, row in enumerate(rows):
        missing = [k for k in ("model", "solver", "nfe", metric) if k not in row]
        if missing:
            raise ValueError(f"rows[{i}] lacks keys {missing}; each row needs model, solver, nfe, {metric}")
        if row[metric] is not None:
            key = (str(row["model"]), str(row["solver"]))
            lines[key].append((float(row["nfe"]), float(row[metric])))
    if not lines:
        raise ValueError(f"no row has a value for metric={metric!r}; nothing to plot")

    fig = Figure(figsize=(5.5, 4.0))
    ax = fig.subplots()
    values = [floor] if floor is not None else []
    for (model, solver), pts in sorted(lines.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{model} {solver}")
        values += [p[1] for p in pts]
    if floor is not None:
        ax.axhline(floor, color="gray", linestyle="--", label=f"floor ({floor:.3g})")
    if log_y and min(values) > 0:
        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
    nfes = sorted({p[0] for pts in lines.values() for p in pts})
    if min(nfes) > 0:
        ax.set_xscale("log", base=2)
    ax.set_xticks(nfes)
    ax.set_xticklabels([f"{n:g}" for n in nfes])
    ax.set_xlabel("NFE (network evaluations per sample)")
    ax.set_ylabel(metric)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def save_scatter_2d(points: Sequence[tuple[str, Tensor]], path: PathLike, lim: float | None = None) -> Path:
    """Save side-by-side scatter panels, one per ``(title, points [N, 2])``, shared axes.

    ``lim``: half-width of the square view; by default 1.1 x the largest 99.9 % quantile
    of ``|coordinate|`` over all panels.
    """
    if len(points) == 0:
        raise ValueError("points is empty; pass a list of (title, points [N, 2])")
    arrays = []
    for title, pts in points:
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise ValueError(f"points of panel {title!r} have shape {tuple(pts.shape)}; need [N, 2]")
        arrays.append(pts.detach().to("cpu", torch.float64).numpy())
    if lim is None:
        finite = [np.abs(a[np.isfinite(a).all(axis=1)]) for a in arrays]
        lim = 1.1 * max((float(np.quantile(a, 0.999)) for a in finite if a.size), default=1.0)
        lim = lim if lim > 0 else 1.0
    fig = Figure(figsize=(3.0 * len(points), 3.2))
    axes = fig.subplots(1, len(points), squeeze=False)[0]
    for ax, (title, _), arr in zip(axes, points, arrays):
        ax.scatter(arr[:, 0], arr[:, 1], s=1.0, alpha=0.5, linewidths=0)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    return save_figure(fig, path)


def plot_training(history: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Loss components (log scale) and the consistency residual of the self rows against the step, as a PNG."""
    fig = Figure(figsize=(9, 3.2))
    ax1, ax2 = fig.subplots(1, 2)
    steps = [h["step"] for h in history]
    for key in ("loss", "loss_teacher", "loss_self"):
        ax1.plot(steps, [h[key] for h in history], label=key)
    ax1.set_yscale("log"), ax1.set_xlabel("step"), ax1.legend(fontsize=8), ax1.set_title("loss components")
    ax2.plot(steps, [h["consistency_residual"] for h in history])
    ax2.set_xlabel("step"), ax2.set_title("consistency residual (self rows)")
    return save_figure(fig, path)
