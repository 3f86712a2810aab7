"""Pure-torch SCFM math: time grids, shortcut plans, targets and the loss."""

from scfm.objective.grids import (
    FIRST_POINT,
    base_grid,
    batched_grid_points,
    resolution_mu,
    shift_fixed,
    shift_resolution,
    time_grid,
)
