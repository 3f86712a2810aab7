"""The LCM baseline objective (consistency distillation for flow matching), in float64 closed form."""

import math

import torch

import scfm
from scfm.objective.consistency import ConsistencyPlan, consistency_target, draw_consistency_plan, implied_x0
from scfm.sampling import sample

D = torch.float64


def constant_field(c):
    return lambda x, t, cond: c.expand_as(x).clone()


def test_adjacent_times_lie_one_grid_step_apart():
    plan = draw_consistency_plan(4096, 8, torch.Generator().manual_seed(0), dtype=D)
    assert torch.all(plan.s >= 0) and torch.all(plan.t <= 1)
    torch.testing.assert_close(
        plan.t - plan.s, torch.full_like(plan.t, 1 / 8), atol=1e-5, rtol=0
    )  # first point clamped by 1e-5
    assert set(torch.round(plan.s * 8).long().tolist()) == set(range(8))


def test_target_of_a_constant_field_is_its_exact_data_point():
    g = torch.Generator().manual_seed(1)
    x_t, c = torch.randn(6, 3, generator=g, dtype=D), torch.randn(1, 3, generator=g, dtype=D)
    plan = draw_consistency_plan(6, 4, g, dtype=D)
    target = consistency_target(x_t, plan, {}, constant_field(c), constant_field(c))
    torch.testing.assert_close(target, x_t - plan.t[:, None] * c)
    torch.testing.assert_close(implied_x0(x_t, plan.t, c.expand_as(x_t)), target)  # the teacher itself has zero loss


def test_rows_ending_at_zero_take_the_teacher_euler_step_and_skip_the_target_net():
    x_t = torch.randn(2, 3, dtype=D)
    plan = ConsistencyPlan(t=torch.tensor([0.25, 0.5], dtype=D), s=torch.tensor([0.0, 0.25], dtype=D))
    seen = []

    def target_net(x, t, cond):
        seen.append(t.clone())
        return torch.zeros_like(x)

    teacher_v = torch.ones(2, 3, dtype=D)
    target = consistency_target(x_t, plan, {}, lambda x, t, c: teacher_v, target_net)
    torch.testing.assert_close(target[0], x_t[0] - 0.25)
    torch.testing.assert_close(target[1], x_t[1] - 0.25)  # target net's v = 0 keeps x_s
    assert len(seen) == 1 and seen[0].tolist() == [0.25]


def test_consistency_sampler_is_euler_for_one_step_and_reproducible_from_its_generator():
    model = lambda x, t: torch.sin(3 * x) + t[:, None]  # noqa: E731
    noise = torch.randn(5, 2, dtype=D, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(sample(model, noise, steps=1, solver="consistency"), sample(model, noise, steps=1))
    runs = [
        sample(model, noise, steps=3, solver="consistency", generator=torch.Generator().manual_seed(7))
        for _ in range(2)
    ]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


def test_lcm_objective_trains_in_the_same_engine_and_logs_only_its_part():
    from test_api import UserVelocity, batches, tiny_config

    torch.manual_seed(0)
    result = scfm.distill(
        UserVelocity(),
        batches(),
        tiny_config(objective="lcm", plan=scfm.PlanConfig(teacher_min=8, teacher_max=8)),
        progress=False,
    )
    last = result.history[-1]
    assert math.isfinite(last["loss"]) and last["loss"] == last["loss_teacher"]
    assert math.isnan(last["loss_self"]) and math.isnan(last["consistency_residual"])
