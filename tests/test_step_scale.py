"""The step scale (LoRA strength as a function of the step count) and the self-target ablation."""

import pytest
import torch
from torch import nn

import scfm
from scfm.objective.plans import ShortcutPlan
from scfm.objective.step_scale import StepScale, source_row_scales, student_row_scales
from scfm.objective.targets import VelocitySources, shortcut_target
from scfm.weights.lora import LoraSpec, attach_lora, lora_named_parameters, lora_scale, row_lora_scale

D = torch.float64


def plan_of(n, is_teacher, is_fm, dt=0.1):
    b = len(n)
    return ShortcutPlan(
        is_fm=torch.tensor(is_fm),
        is_teacher=torch.tensor(is_teacher),
        n=torch.tensor(n),
        shift=torch.ones(b, dtype=D),
        start=torch.zeros(b, dtype=torch.long),
        t=torch.full((b,), 0.9, dtype=D),
        dt=torch.where(torch.tensor(is_fm)[:, None], 0.0, torch.full((b, 2), dt, dtype=D)),
        t_skip=2,
    )


def test_scale_is_ref_over_steps_to_the_power():
    linear = StepScale(power=1.0, ref_steps=4.0)
    assert [linear.for_steps(n) for n in (1, 2, 4, 8)] == [4.0, 2.0, 1.0, 0.5]
    assert StepScale(power=0.5, ref_steps=2.0).for_steps(8) == pytest.approx(0.5, abs=1e-15)
    assert StepScale().for_steps(3) == 1.0 and not StepScale().enabled


def test_rows_run_at_the_scale_of_their_jump_and_sub_steps_at_their_grid():
    """A jump over 2 cells of an n-grid is one cell of the n/2-step grid; its sub-steps are cells of the n-grid."""
    plan = plan_of([2, 4, 8, 32, 0], [False, False, False, True, False], [False, False, False, False, True])
    step_scale = StepScale(power=1.0, ref_steps=4.0)
    assert student_row_scales(plan, step_scale).tolist() == [4.0, 2.0, 1.0, 0.25, 0.0]
    assert source_row_scales(plan, step_scale).tolist() == [2.0, 1.0, 0.5, 0.125, 0.0]


@pytest.mark.parametrize(
    "field, value", [("step_scale.power", -1.0), ("step_scale.power", 3.0), ("step_scale.ref_steps", 0.0)]
)
def test_bad_step_scale_names_the_field(field, value):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        scfm.DistillConfig.from_dict({field: value}).validate()


def test_lcm_with_a_step_scale_is_refused():
    with pytest.raises(ValueError, match="step_scale.power"):
        scfm.DistillConfig.from_dict({"objective": "lcm", "step_scale.power": 1.0}).validate()


def test_self_targets_is_checked():
    with pytest.raises(ValueError, match="self_targets='students'"):
        scfm.DistillConfig(self_targets="students").validate()


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 16), nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def lora_model(seed=0):
    torch.manual_seed(seed)
    model = attach_lora(TwoLayer(), LoraSpec(targets=("fc1", "fc2"), rank=4, alpha=4.0))
    with torch.no_grad():
        for _, p in lora_named_parameters(model):
            p.normal_(0, 0.3)  # a non-zero delta on both layers
    return model


def test_row_scales_equal_one_scale_per_row():
    model, x = lora_model(), torch.randn(4, 3)
    scales = torch.tensor([0.0, 0.5, 1.0, 2.5])
    with torch.no_grad(), row_lora_scale(model, scales):
        rows = model(x)
    for i, s in enumerate(scales.tolist()):
        with torch.no_grad(), lora_scale(model, s):
            assert torch.allclose(rows[i], model(x[i : i + 1])[0], atol=1e-6)
    with torch.no_grad():  # hooks are gone after the block
        assert torch.allclose(model(x), torch.stack([model(x[i : i + 1])[0] for i in range(4)]), atol=1e-6)


def test_row_scales_for_another_batch_size_raise():
    model = lora_model()
    with pytest.raises(ValueError, match="leading size 3"), row_lora_scale(model, torch.ones(2)):
        model(torch.randn(3, 3))


def field(scale):
    return lambda x, t, cond: scale * torch.sin(x) * t.view(-1, 1)


def test_self_slow_source_replaces_only_the_self_rows_second_half():
    x = torch.randn(4, 3, dtype=D)
    plan = plan_of([4, 4, 32, 32], [False, False, True, True], [False] * 4)
    teacher, fast, slow = field(1.0), field(2.0), field(3.0)
    ablated = shortcut_target(x, x, x, plan, {}, VelocitySources(teacher, teacher, slow, self_slow=teacher)).target
    method = shortcut_target(x, x, x, plan, {}, VelocitySources(teacher, fast, slow)).target
    all_teacher = shortcut_target(x, x, x, plan, {}, VelocitySources(teacher, teacher, teacher)).target
    assert torch.allclose(ablated[:2], all_teacher[:2], atol=1e-14)  # self rows: teacher composes the jump
    assert torch.allclose(ablated[2:], method[2:], atol=1e-14)  # teacher rows: unchanged (teacher, then slow EMA)
    assert not torch.allclose(ablated[:2], method[:2])


def blobs(batch=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[2.0, 2.0], [-2.0, -2.0]])
    while True:
        yield {"x0": centers[torch.randint(0, 2, (batch,), generator=g)] + 0.2 * torch.randn(batch, 2, generator=g)}


class Velocity2D(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 32), nn.Linear(32, 2)

    def forward(self, x, t):
        return self.fc2(torch.relu(self.fc1(torch.cat([x, t[:, None]], dim=1))))


def test_a_step_scaled_run_samples_at_its_formula_and_calibrates_around_it(tmp_path):
    torch.manual_seed(0)
    config = scfm.DistillConfig(
        max_steps=6,
        lr=1e-3,
        batch_size=128,
        lora=LoraSpec(targets=("fc1", "fc2"), rank=4, alpha=4.0),
        plan=scfm.PlanConfig(shift_range=(1.0, 1.0), resolution_shift_prob=0.0),
        step_scale=StepScale(power=1.0, ref_steps=2.0),
        calibration_steps=(1, 4),
        calibration_samples=64,
        self_targets="teacher",
    )
    student = scfm.distill(Velocity2D(), blobs(), config, progress=False)
    assert student.trained_scale(1) == 2.0 and student.trained_scale(8) == 0.25
    for n in (1, 4):  # calibrated: a multiple of the formula's scale (0.1 apart), found by the search
        multiple = student.lora_scales[n] / student.trained_scale(n)
        assert multiple == pytest.approx(round(multiple, 1), abs=1e-6) and 0 <= multiple <= 2
    assert student.scale_for_steps(8) == 0.25  # no calibration for 8 steps: the formula
    noise = torch.randn(16, 2)
    assert torch.equal(scfm.sample(student, noise, steps=8), scfm.sample(student, noise, steps=8, lora_scale=0.25))
    student.save(tmp_path / "s")
    reloaded = scfm.load(tmp_path / "s", Velocity2D())
    assert reloaded.step_scale == StepScale(power=1.0, ref_steps=2.0) and reloaded.lora_scales == student.lora_scales
