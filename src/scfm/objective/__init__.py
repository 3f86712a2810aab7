"""Pure-torch SCFM math: time grids, shortcut plans, targets and the loss."""

from scfm.objective.consistency import ConsistencyPlan, consistency_target, draw_consistency_plan, implied_x0
from scfm.objective.flow import flow_matching_target, interpolate
from scfm.objective.grids import (
    FIRST_POINT,
    base_grid,
    batched_grid_points,
    resolution_mu,
    shift_fixed,
    shift_resolution,
    time_grid,
)
from scfm.objective.loss import ShortcutLoss, consistency_residual, scfm_loss
from scfm.objective.plans import PlanConfig, ShortcutPlan, draw_plan
from scfm.objective.targets import ShortcutTarget, VelocitySources, shortcut_target

__all__ = [
    "ConsistencyPlan",
    "consistency_target",
    "draw_consistency_plan",
    "implied_x0",
    "FIRST_POINT",
    "PlanConfig",
    "ShortcutLoss",
    "ShortcutPlan",
    "ShortcutTarget",
    "VelocitySources",
    "base_grid",
    "batched_grid_points",
    "consistency_residual",
    "draw_plan",
    "flow_matching_target",
    "interpolate",
    "resolution_mu",
    "scfm_loss",
    "shift_fixed",
    "shift_resolution",
    "shortcut_target",
    "time_grid",
]
