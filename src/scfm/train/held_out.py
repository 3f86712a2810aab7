"""The LoRA scale per step count, chosen at the end of every run on data it did not train on.

The batch comes from the run's own data stream after the last training batch (never seen by
the optimizer), the noise from a generator of its own; the distance is the paired MSE to the
teacher's many-step Euler samples from the same noise and conditioning
(:func:`scfm.calibration.calibrate_against_teacher`): no reference images and no feature
network are needed, and nothing a benchmark scores on is touched.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from scfm.calibration import ScaleCalibration, calibrate_against_teacher
from scfm.distilled import DistilledModel
from scfm.train.config import DistillConfig


def held_out_calibration(
    student: DistilledModel,
    stream: Iterator[dict[str, Any]],
    config: DistillConfig,
    device: torch.device,
    progress: bool = False,
) -> ScaleCalibration | None:
    """Calibrate ``student`` on the next batch of ``stream`` (None when the stream has run out).

    Uses at most ``config.calibration_samples`` rows, step counts ``config.calibration_steps``,
    a teacher of ``config.plan.teacher_max`` Euler steps, and noise seeded ``config.seed + 3``.
    """
    batch = next(stream, None)
    if batch is None:
        return None
    x0 = batch["x0"]
    rows = min(int(x0.shape[0]), config.calibration_samples)
    generator = torch.Generator().manual_seed(config.seed + 3)
    noise = torch.randn(x0[:rows].shape, generator=generator, dtype=x0.dtype).to(device)
    cond = {k: _rows(v, rows, x0.shape[0], device) for k, v in batch.items() if k != "x0"}
    return calibrate_against_teacher(
        student,
        noise,
        cond,
        steps=config.calibration_steps,
        teacher_steps=config.plan.teacher_max,
        progress=progress,
    )


def _rows(value: Any, rows: int, batch: int, device: torch.device) -> Any:
    """The first ``rows`` rows of a per-sample tensor (shared one-row tensors and non-tensors as they are)."""
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
        return value[:rows].to(device)
    return value.to(device) if isinstance(value, torch.Tensor) else value
