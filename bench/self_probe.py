"""Watch the self-distillation targets move: a fixed probe batch scored during a digits run.

On one fixed batch (digits, noise and shortcut plan all seeded, drawn once) the probe builds the
self-branch targets twice: with the run's own sources (the EMAs compose the coarse jumps) and
with the frozen teacher composing the same jumps (the target the run would have if its EMAs
never moved: the EMAs start as the teacher, so this is also the frozen initial student). It
records, over the self rows of the probe batch:

- ``drift``: ``mean ||T_ema - T_frozen||^2 / mean ||T_frozen||^2``, how far the targets have moved;
- ``loss_self``: the student's MSE to its current targets (what the run logs as ``loss_self``);
- ``loss_frozen``: the student's MSE to the frozen targets.

"The targets move while the loss stays flat" is then a measurement: ``drift`` grows while
``loss_self`` stays put, and ``loss_frozen`` shows whether the student followed the targets away
from where they started.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

PROBE_ROWS = 256
PROBE_SEED = 4242


def self_target_probe(records: list[dict], rows: int = PROBE_ROWS, seed: int = PROBE_SEED) -> Callable:
    """A ``scfm.distill`` validation callback appending one record per call to ``records``."""
    from scfm.data.batches import DigitsBatches
    from scfm.objective.flow import interpolate
    from scfm.objective.loss import per_row_mse
    from scfm.objective.plans import draw_plan
    from scfm.objective.targets import VelocitySources

    batch = DigitsBatches(rows, seed=seed).next_batch()
    generator = torch.Generator().manual_seed(seed)
    eps = torch.randn(batch["x0"].shape, generator=generator)
    fixed: dict = {}

    def probe(engine) -> None:
        step = engine.step_fn
        device = engine.device
        if not fixed:  # the plan needs the run's plan config: drawn once, at the first call
            fixed["plan"] = draw_plan(rows, engine.config.plan, torch.Generator().manual_seed(seed), device=device)
        plan = fixed["plan"]
        x0, noise = batch["x0"].to(device), eps.to(device)
        cond = {"label": batch["label"].to(device)}
        x_t = interpolate(x0, noise, plan.t)
        own = step.targets(x_t, x0, noise, plan, cond).target
        frozen_sources = VelocitySources(
            teacher=step._teacher, fast=step._teacher, slow=step._slow, self_slow=step._teacher
        )
        frozen = step.targets(x_t, x0, noise, plan, cond, frozen_sources).target
        with torch.inference_mode():
            pred = step.student_velocity(x_t, plan, cond)
        rows_self = plan.is_self
        drift = per_row_mse(own, frozen)[rows_self].mean() / frozen.square().flatten(1).mean(1)[rows_self].mean()
        records.append(
            {
                "step": engine.step,
                "drift": float(drift),
                "loss_self": float(per_row_mse(pred, own)[rows_self].mean()),
                "loss_frozen": float(per_row_mse(pred, frozen)[rows_self].mean()),
            }
        )

    return probe
