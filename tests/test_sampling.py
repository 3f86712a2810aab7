"""Solver contracts on fields with known exact solutions."""

import pytest
import torch

from scfm.sampling import SOLVERS, sample, solver_nfe


class Counting:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, t, **cond):
        self.calls += 1
        return self.fn(x, t, **cond)


@pytest.mark.parametrize("solver", SOLVERS)
def test_every_solver_lands_on_the_data_point_of_a_perfect_denoiser(solver):
    x0 = torch.randn(4, 3, dtype=torch.float64)
    model = Counting(lambda x, t: (x - x0) / t[:, None])  # data prediction x - t v == x0 everywhere
    out = sample(model, torch.randn(4, 3, dtype=torch.float64), steps=3, solver=solver, shift=2.0)
    assert torch.allclose(out, x0, atol=1e-9)
    assert model.calls == solver_nfe(solver, 3)


def test_euler_on_constant_velocity_moves_by_the_velocity():
    noise = torch.zeros(2, 2, dtype=torch.float64)
    out = sample(lambda x, t: torch.ones_like(x), noise, steps=5, shift=3.0)
    assert torch.allclose(out, torch.full_like(noise, -(1 - 1e-5)), atol=1e-12)


def test_heun_is_second_order_on_a_time_dependent_field():
    field = lambda x, t: t[:, None] ** 2 * torch.ones_like(x)  # noqa: E731 ; exact: x(0) = x(1) - 1/3
    noise = torch.zeros(1, 1, dtype=torch.float64)
    err = [abs(sample(field, noise, steps=n, solver="heun").item() + 1 / 3) for n in (4, 8)]
    assert err[1] < err[0] / 3


def test_zero_steps_and_unknown_solver_are_rejected():
    with pytest.raises(ValueError, match="steps=0"):
        sample(lambda x, t: x, torch.zeros(1, 1), steps=0)
    with pytest.raises(ValueError, match="solver='rk4'"):
        sample(lambda x, t: x, torch.zeros(1, 1), solver="rk4")


def test_sample_calls_a_wrapper_object_not_its_model_attribute():
    class TeacherView:
        model = staticmethod(lambda x, t: torch.full_like(x, 5.0))  # a decoy that must not be called

        def __call__(self, x, t):
            return torch.zeros_like(x)

    assert torch.equal(sample(TeacherView(), torch.ones(2, 2), steps=2), torch.ones(2, 2))
