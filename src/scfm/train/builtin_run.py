"""Teacher, data and validation grids for `scfm distill` on the built-in models."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from scfm.data.batches import DigitsBatches, Toy2DBatches
from scfm.data.toy2d import TOY2D_NAMES
from scfm.models.builtin import load_builtin, load_shipped_teacher
from scfm.train.config import DistillConfig


def _toy_name(spec: str, field: str) -> str:
    name = spec.split(":", 1)[1] if ":" in spec else ""
    if name not in TOY2D_NAMES:
        raise ValueError(
            f"{field}={spec!r}: unknown 2-D distribution {name!r}; use toy2d:<name> with name in {TOY2D_NAMES}"
        )
    return name


def build_teacher(config: DistillConfig, device: torch.device) -> nn.Module:
    """'digits' / 'toy2d:<name>' (shipped teachers) or a path to a built-in model file."""
    spec = config.teacher
    if spec == "digits":
        return load_shipped_teacher("digits", device=str(device))
    if spec.startswith("toy2d:"):
        return load_shipped_teacher(f"toy2d:{_toy_name(spec, 'teacher')}", device=str(device))
    if Path(spec).suffix == ".safetensors":
        return load_builtin(spec, device=str(device))
    raise ValueError(
        f"teacher={spec!r} is not 'digits', 'toy2d:<name>' or a .safetensors file written by `scfm pretrain`"
    )


def build_data(config: DistillConfig):
    """A resumable built-in batch source with the config's (global) batch size and seed."""
    spec = config.data
    if spec == "digits":
        return DigitsBatches(config.batch_size, seed=config.seed)
    if spec.startswith("toy2d:"):
        return Toy2DBatches(_toy_name(spec, "data"), config.batch_size, seed=config.seed)
    raise ValueError(f"data={spec!r} is not 'digits' or 'toy2d:<name>'")


def validation_fn(config: DistillConfig, logger_dir: str | None):
    """A callback writing a PNG of student samples at 1, 2, 4 steps (digits or 2-D)."""
    if not logger_dir:
        return None
    from scfm.eval.plots import save_comparison_grid, save_scatter_2d
    from scfm.sampling import sample

    out = Path(logger_dir) / "validation"
    gen = torch.Generator().manual_seed(1234)
    digits = config.data == "digits"
    noise = torch.randn(20, 1, 8, 8, generator=gen) if digits else torch.randn(2000, 2, generator=gen)
    labels = torch.arange(10).repeat(2)

    def run(engine) -> None:
        device = engine.device
        cond = {"label": labels.to(device)} if digits else {}
        shots = [
            (f"student euler {n}", sample(engine.model, noise.to(device), steps=n, **cond).cpu()) for n in (1, 2, 4)
        ]
        engine.model.train()
        path = out / f"step_{engine.step:08d}.png"
        (save_comparison_grid if digits else save_scatter_2d)(shots, path)

    return run
