"""The SCFM loss with its teacher / self / flow-matching parts and the consistency residual."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scfm.objective.plans import ShortcutPlan


@dataclass
class ShortcutLoss:
    """total: scalar with gradient, the mean over all B rows of the per-row MSE.

    teacher / self_ / fm: detached means over the rows of each branch (nan when a branch
    has no row in this batch). per_row [B]: detached per-row MSE.
    """

    total: torch.Tensor
    teacher: torch.Tensor
    self_: torch.Tensor
    fm: torch.Tensor
    per_row: torch.Tensor


def per_row_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all but the batch dim: [B, ...] x 2 -> [B] (float32 or wider)."""
    diff = pred.float() - target.float() if pred.dtype in (torch.float16, torch.bfloat16) else pred - target
    return diff.square().flatten(1).mean(dim=1)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    count = mask.sum()
    if count == 0:
        return torch.full((), float("nan"), device=values.device)
    return (values * mask).sum() / count


def scfm_loss(pred: torch.Tensor, target: torch.Tensor, plan: ShortcutPlan) -> ShortcutLoss:
    """pred (student velocity, with grad) and target [B, ...] -> :class:`ShortcutLoss`."""
    rows = per_row_mse(pred, target)
    detached = rows.detach()
    return ShortcutLoss(
        total=rows.mean(),
        teacher=_masked_mean(detached, plan.is_teacher),
        self_=_masked_mean(detached, plan.is_self),
        fm=_masked_mean(detached, plan.is_fm),
        per_row=detached,
    )


def consistency_residual(first_velocity: torch.Tensor, target: torch.Tensor, plan: ShortcutPlan) -> torch.Tensor:
    """Relative gap between the fast EMA's instantaneous velocity and its own jump average.

    ``mean_self ||v_first - target||^2 / mean_self ||target||^2`` over self-branch rows: 0 for
    a perfectly self-consistent (straight-path) model, large when few-step jumps differ from
    the model's own composition of sub-steps. nan when the batch has no self row.
    """
    mask = plan.is_self
    if mask.sum() == 0:
        return torch.full((), float("nan"), device=target.device)
    gap = per_row_mse(first_velocity, target)[mask].mean()
    scale = target.float().square().flatten(1).mean(dim=1)[mask].mean()
    return (gap / scale.clamp_min(1e-12)).detach()
