"""Shortcut plans: which branch, grid, shift, start point and sub-steps each sample trains on.

A plan is drawn for a whole batch at once from a ``torch.Generator`` (spec, training step
points 1-4). Every per-sample field is a tensor over the batch, so targets are computed
with masks over the one batch: the flow-matching, teacher and self rows never get mixed up.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from scfm.objective.grids import batched_grid_points, resolution_mu, shift_fixed


def default_self_grids(t_skip: int, teacher_min: int) -> tuple[int, ...]:
    """Powers of two that are multiples of ``t_skip`` and below ``teacher_min`` (2, 4, 8, 16 for 2, 32)."""
    grids, n = [], 1
    while n < teacher_min:
        if n >= t_skip and n % t_skip == 0:
            grids.append(n)
        n *= 2
    return tuple(grids)


@dataclass(frozen=True)
class PlanConfig:
    """Knobs of the plan sampler; defaults are the spec's (Flux.1-dev)."""

    t_skip: int = 2
    """Sub-steps per shortcut jump (even): half from teacher/fast EMA, half from slow EMA."""
    teacher_ratio: float = 0.4
    """Probability that a shortcut sample takes the teacher branch (paper's k/N)."""
    teacher_min: int = 32
    """Smallest fine-grid size for the teacher branch."""
    teacher_max: int = 32
    """Largest fine-grid size for the teacher branch (drawn in steps of ``t_skip``)."""
    self_grids: tuple[int, ...] | None = None
    """Coarse grid sizes for the self branch; None = powers of two from t_skip below teacher_min."""
    fm_ratio: float = 0.0
    """Fraction of the batch trained with the plain flow-matching target ``eps - x0``."""
    shift_range: tuple[float, float] = (2.5, 4.5)
    """Fixed shift s ~ U[lo, hi]; (1, 1) turns the fixed shift off."""
    resolution_shift_prob: float = 0.1
    """Probability of the resolution shift instead (needs ``seq_len``; 0 turns it off)."""

    def resolved_self_grids(self) -> tuple[int, ...]:
        return self.self_grids if self.self_grids is not None else default_self_grids(self.t_skip, self.teacher_min)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field (as ``plan.<field>``, its name in a DistillConfig),
        the bad value and the fix."""
        if self.t_skip < 2 or self.t_skip % 2:
            raise ValueError(
                f"plan.t_skip={self.t_skip} must be an even integer >= 2 (half the sub-steps come from the slow EMA)"
            )
        for name in ("teacher_ratio", "fm_ratio", "resolution_shift_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"plan.{name}={value} must lie in [0, 1]")
        if self.teacher_min > self.teacher_max:
            raise ValueError(f"plan.teacher_min={self.teacher_min} must be <= plan.teacher_max={self.teacher_max}")
        grids = self.resolved_self_grids()
        sizes_by_name = (
            ("plan.teacher_min/teacher_max", (self.teacher_min, self.teacher_max)),
            ("plan.self_grids", grids),
        )
        for name, sizes in sizes_by_name:
            bad = [n for n in sizes if n < self.t_skip or n % self.t_skip]
            if bad:
                raise ValueError(
                    f"{name} contain {bad}: every grid size must be a positive multiple of plan.t_skip={self.t_skip}"
                )
        if not grids and self.teacher_ratio < 1.0:
            raise ValueError(
                f"no self-branch grid below plan.teacher_min={self.teacher_min} for plan.t_skip={self.t_skip}; "
                "lower plan.t_skip or set plan.self_grids"
            )
        lo, hi = self.shift_range
        if not 0 < lo <= hi:
            raise ValueError(f"plan.shift_range={self.shift_range} must satisfy 0 < lo <= hi")


@dataclass
class ShortcutPlan:
    """Per-sample plan for a batch of B samples (all tensors on one device).

    is_fm [B] bool: plain flow-matching rows. is_teacher [B] bool: teacher-branch rows
    (never set on FM rows). n [B] int64: grid size (0 on FM rows). shift [B]: effective
    fixed-shift factor. start [B] int64: start index j. t [B] in (0, 1): start time.
    dt [B, t_skip] >= 0: sub-step sizes (zeros on FM rows).
    """

    is_fm: torch.Tensor
    is_teacher: torch.Tensor
    n: torch.Tensor
    shift: torch.Tensor
    start: torch.Tensor
    t: torch.Tensor
    dt: torch.Tensor
    t_skip: int = field(default=2)

    def select(self, rows: slice) -> ShortcutPlan:
        """The plan of rows ``rows`` (a process's slice of the global batch)."""
        names = ("is_fm", "is_teacher", "n", "shift", "start", "t", "dt")
        return replace(self, **{name: getattr(self, name)[rows] for name in names})

    @property
    def is_self(self) -> torch.Tensor:
        return ~self.is_fm & ~self.is_teacher

    @property
    def is_shortcut(self) -> torch.Tensor:
        return ~self.is_fm

    @property
    def jump(self) -> torch.Tensor:
        """Total time D [B] covered by the shortcut (0 on FM rows)."""
        return self.dt.sum(dim=1)


def _exact_count_mask(size: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Bool [size] with floor(ratio*size) + Bernoulli(frac) trues at random positions.

    The count has expectation ``ratio * size`` with the least variance, also for size 1.
    """
    want = ratio * size
    count = int(want)
    if torch.rand((), generator=generator).item() < want - count:
        count += 1
    mask = torch.zeros(size, dtype=torch.bool)
    mask[torch.randperm(size, generator=generator)[:count]] = True
    return mask


def _pick(choices: tuple[int, ...], size: int, generator: torch.Generator) -> torch.Tensor:
    table = torch.tensor(choices, dtype=torch.long)
    return table[torch.randint(0, len(choices), (size,), generator=generator)]


def draw_plan(
    batch_size: int,
    cfg: PlanConfig,
    generator: torch.Generator,
    seq_len: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> ShortcutPlan:
    """Draw a plan for ``batch_size`` samples; all randomness comes from ``generator`` (CPU).

    ``seq_len`` (token count) enables the resolution shift; without it that shift is off.
    """
    b, k = batch_size, cfg.t_skip
    is_fm = _exact_count_mask(b, cfg.fm_ratio, generator)
    is_teacher = _exact_count_mask(b, cfg.teacher_ratio, generator) & ~is_fm
    teacher_sizes = tuple(range(cfg.teacher_min, cfg.teacher_max + 1, k))
    self_sizes = cfg.resolved_self_grids() or teacher_sizes
    n = torch.where(is_teacher, _pick(teacher_sizes, b, generator), _pick(self_sizes, b, generator))
    lo, hi = cfg.shift_range
    shift = lo + (hi - lo) * torch.rand(b, generator=generator, dtype=torch.float64)
    use_res = torch.rand(b, generator=generator, dtype=torch.float64) < cfg.resolution_shift_prob
    if seq_len is not None and cfg.resolution_shift_prob > 0:
        shift = torch.where(use_res, torch.exp(torch.tensor(resolution_mu(seq_len), dtype=torch.float64)), shift)
    start = k * (torch.rand(b, generator=generator, dtype=torch.float64) * (n // k)).floor().long()
    offsets = start[:, None] + torch.arange(k + 1)[None, :]
    points = batched_grid_points(n, offsets, shift)
    dt = points[:, :-1] - points[:, 1:]
    u = torch.rand(b, generator=generator, dtype=torch.float64)
    t = torch.where(is_fm, shift_fixed(u, shift), points[:, 0])
    dt = torch.where(is_fm[:, None], torch.zeros_like(dt), dt)
    n = torch.where(is_fm, torch.zeros_like(n), n)
    to = dict(device=device)
    return ShortcutPlan(
        is_fm=is_fm.to(**to),
        is_teacher=is_teacher.to(**to),
        n=n.to(**to),
        shift=shift.to(dtype=dtype, **to),
        start=start.to(**to),
        t=t.to(dtype=dtype, **to),
        dt=dt.to(dtype=dtype, **to),
        t_skip=k,
    )
