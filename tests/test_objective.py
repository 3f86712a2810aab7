"""Closed-form contracts of the pure SCFM math, in float64."""

import math

import pytest
import torch

from scfm.objective.grids import FIRST_POINT, resolution_mu, shift_fixed, shift_resolution, time_grid
from scfm.objective.loss import consistency_residual, scfm_loss
from scfm.objective.plans import PlanConfig, ShortcutPlan, default_self_grids, draw_plan
from scfm.objective.targets import VelocitySources, shortcut_target

D = torch.float64


def const_field(value):
    return lambda x, t, cond: torch.full_like(x, value)


def make_plan(dt, is_teacher, is_fm=None, t=None):
    dt = torch.tensor(dt, dtype=D)
    b = dt.shape[0]
    is_fm = torch.zeros(b, dtype=torch.bool) if is_fm is None else torch.tensor(is_fm)
    t = torch.full((b,), 0.8, dtype=D) if t is None else torch.tensor(t, dtype=D)
    return ShortcutPlan(
        is_fm=is_fm,
        is_teacher=torch.tensor(is_teacher),
        n=torch.full((b,), 4),
        shift=torch.ones(b, dtype=D),
        start=torch.zeros(b, dtype=torch.long),
        t=t,
        dt=torch.where(is_fm[:, None], 0.0, dt),
        t_skip=dt.shape[1],
    )


def test_shift_one_is_identity_and_endpoints_are_fixed():
    t = torch.linspace(0, 1, 11, dtype=D)
    assert torch.equal(shift_fixed(t, 1.0), t)
    s = shift_fixed(t, 3.0)
    assert s[0] == 0 and s[-1] == 1 and torch.all(s[1:-1] > t[1:-1])


def test_resolution_shift_is_fixed_shift_with_exp_mu():
    t = torch.linspace(0.01, 0.99, 7, dtype=D)
    mu = 0.8
    expected = math.exp(mu) / (math.exp(mu) + (1 / t - 1))
    assert torch.allclose(shift_resolution(t, mu), expected, atol=1e-14)
    assert resolution_mu(256) == pytest.approx(0.5) and resolution_mu(4096) == pytest.approx(1.15)


def test_time_grid_runs_from_clamped_one_to_zero():
    grid = time_grid(4, shift=3.0, dtype=D)
    assert grid.shape == (5,) and grid[0] == FIRST_POINT and grid[-1] == 0
    assert torch.all(grid[1:] < grid[:-1])


def test_time_grid_rejects_zero_steps():
    with pytest.raises(ValueError, match="steps=0"):
        time_grid(0)


def test_default_self_grids_are_powers_of_two_below_teacher_grid():
    assert default_self_grids(2, 32) == (2, 4, 8, 16)
    assert default_self_grids(4, 32) == (4, 8, 16)


def test_substeps_sum_to_jump_between_grid_points():
    cfg = PlanConfig(teacher_ratio=0.5, shift_range=(1.0, 3.0))
    plan = draw_plan(256, cfg, torch.Generator().manual_seed(0), dtype=D)
    for i in range(0, 256, 17):
        grid = time_grid(int(plan.n[i]), float(plan.shift[i]), dtype=D)
        j = int(plan.start[i])
        assert plan.t[i] == pytest.approx(float(grid[j]), abs=1e-12)
        assert plan.jump[i] == pytest.approx(float(grid[j] - grid[j + cfg.t_skip]), abs=1e-12)
        assert torch.allclose(plan.dt[i], grid[j : j + cfg.t_skip] - grid[j + 1 : j + cfg.t_skip + 1], atol=1e-12)


def test_plan_branches_grids_and_start_indices_follow_config():
    cfg = PlanConfig(teacher_ratio=0.4, fm_ratio=0.25)
    plan = draw_plan(4000, cfg, torch.Generator().manual_seed(1), dtype=D)
    assert plan.is_fm.float().mean().item() == pytest.approx(0.25, abs=0.01)
    assert (plan.is_teacher & plan.is_fm).sum() == 0
    assert plan.is_teacher.sum() / (~plan.is_fm).sum() == pytest.approx(0.4, abs=0.03)
    assert set(plan.n[plan.is_teacher].tolist()) == {32}
    assert set(plan.n[plan.is_self].tolist()) == {2, 4, 8, 16}
    sc = plan.is_shortcut
    assert torch.all(plan.start[sc] % 2 == 0) and torch.all(plan.start[sc] < plan.n[sc])
    assert torch.all(plan.dt[plan.is_fm] == 0) and torch.all((plan.t > 0) & (plan.t < 1))


def test_plan_is_reproducible_from_generator_seed():
    cfg = PlanConfig()
    a = draw_plan(64, cfg, torch.Generator().manual_seed(7))
    b = draw_plan(64, cfg, torch.Generator().manual_seed(7))
    assert torch.equal(a.t, b.t) and torch.equal(a.is_teacher, b.is_teacher) and torch.equal(a.dt, b.dt)


def test_batch_of_one_still_takes_teacher_branch_at_its_rate():
    cfg = PlanConfig(teacher_ratio=0.4)
    gen = torch.Generator().manual_seed(0)
    hits = sum(bool(draw_plan(1, cfg, gen).is_teacher[0]) for _ in range(2000))
    assert hits / 2000 == pytest.approx(0.4, abs=0.04)


def test_one_substep_shortcut_equals_teacher_euler_step():
    x = torch.randn(3, 5, dtype=D)
    field = lambda x, t, c: torch.sin(x) * t[:, None]  # noqa: E731
    plan = make_plan([[0.1, 0.0]] * 3, [True] * 3)
    out = shortcut_target(x, x, x, plan, {}, VelocitySources(field, const_field(9.0), const_field(9.0)))
    euler_next = x - 0.1 * field(x, plan.t, {})
    assert torch.allclose(x - 0.1 * out.target, euler_next, atol=1e-14)


def test_target_of_constant_field_is_that_constant():
    x = torch.randn(4, 3, dtype=D)
    plan = make_plan([[0.05, 0.2]] * 4, [True, False, True, False])
    src = VelocitySources(const_field(1.5), const_field(1.5), const_field(1.5))
    assert torch.allclose(shortcut_target(x, x, x, plan, {}, src).target, torch.full_like(x, 1.5), atol=1e-14)


def test_targets_on_linear_velocity_field_are_exact():
    a = 0.7
    x = torch.randn(2, 4, dtype=D)
    d0, d1 = 0.1, 0.3
    lin = lambda x, t, c: a * x  # noqa: E731
    plan = make_plan([[d0, d1]] * 2, [True, False])
    out = shortcut_target(x, x, x, plan, {}, VelocitySources(lin, lin, lin))
    expected = (d0 * a * x + d1 * a * (1 - a * d0) * x) / (d0 + d1)
    assert torch.allclose(out.target, expected, atol=1e-14)


def test_branches_use_teacher_fast_and_slow_on_the_right_rows_with_fm_rows():
    # rows: FM, teacher, self, FM, self: the FM rows must not shift the teacher/self rows.
    x0, eps = torch.zeros(5, 2, dtype=D), torch.ones(5, 2, dtype=D)
    plan = make_plan([[0.1, 0.3]] * 5, [False, True, False, False, False], is_fm=[True, False, False, True, False])
    out = shortcut_target(eps, x0, eps, plan, {}, VelocitySources(const_field(1.0), const_field(2.0), const_field(3.0)))
    teacher_row, self_row = (0.1 * 1 + 0.3 * 3) / 0.4, (0.1 * 2 + 0.3 * 3) / 0.4
    assert torch.allclose(
        out.target[:, 0], torch.tensor([1.0, teacher_row, self_row, 1.0, self_row], dtype=D), atol=1e-14
    )


def test_velocity_sources_see_only_their_rows_and_matching_cond():
    seen = {}

    def record(name):
        def fn(x, t, cond):
            seen[name] = cond["label"].tolist()
            return torch.zeros_like(x)

        return fn

    plan = make_plan([[0.1, 0.1]] * 4, [True, False, True, False])
    x = torch.zeros(4, 2, dtype=D)
    shortcut_target(
        x, x, x, plan, {"label": torch.tensor([10, 11, 12, 13])}, VelocitySources(record("t"), record("f"), record("s"))
    )
    assert seen == {"t": [10, 12], "f": [11, 13], "s": [10, 11, 12, 13]}


def test_loss_components_average_their_own_rows():
    plan = make_plan([[0.1, 0.1]] * 4, [True, False, False, False], is_fm=[False, False, True, False])
    pred = torch.tensor([[1.0], [2.0], [3.0], [4.0]], dtype=D, requires_grad=True)
    loss = scfm_loss(pred, torch.zeros(4, 1, dtype=D), plan)
    assert loss.total.item() == pytest.approx((1 + 4 + 9 + 16) / 4)
    assert loss.teacher.item() == 1 and loss.fm.item() == 9 and loss.self_.item() == pytest.approx(10)
    loss.total.backward()
    assert pred.grad is not None


def test_consistency_residual_is_zero_for_a_straight_field():
    plan = make_plan([[0.1, 0.2]] * 2, [False, False])
    x = torch.randn(2, 3, dtype=D)
    out = shortcut_target(x, x, x, plan, {}, VelocitySources(const_field(1.0), const_field(2.0), const_field(2.0)))
    assert consistency_residual(out.first_velocity, out.target, plan).item() == pytest.approx(0.0, abs=1e-14)
