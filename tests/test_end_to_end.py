"""A real, seeded distillation on a 2-D teacher: few-step quality must improve a lot."""

import copy
import time

import torch

import scfm
from scfm.data.batches import toy2d_batches
from scfm.data.toy2d import sample_toy2d
from scfm.eval.metrics import sliced_wasserstein
from scfm.models.mlp2d import MLP2DConfig, VelocityMLP2D
from scfm.train.presets import toy2d_config
from scfm.train.pretrain import PretrainConfig, pretrain_flow_matching


def test_two_step_student_halves_the_teachers_sliced_wasserstein():
    start = time.perf_counter()
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    teacher = pretrain_flow_matching(
        VelocityMLP2D(MLP2DConfig(hidden=128, depth=3)),
        toy2d_batches("8gaussians", 512, gen),
        PretrainConfig(steps=800, lr=2e-3, warmup=50, ema_decay=0.99),
        gen,
        progress=False,
    )
    ref = sample_toy2d("8gaussians", 4000, torch.Generator().manual_seed(123))
    noise = torch.randn(4000, 2, generator=torch.Generator().manual_seed(5))

    def swd(model, steps):
        return sliced_wasserstein(
            scfm.sample(model, noise, steps=steps), ref, generator=torch.Generator().manual_seed(0)
        )

    teacher_copy = copy.deepcopy(teacher)
    teacher_2 = swd(teacher, 2)
    student = scfm.distill(teacher, toy2d_batches("8gaussians", 512, gen), toy2d_config(max_steps=600), progress=False)
    student_2 = swd(student, 2)
    assert student_2 <= 0.5 * teacher_2, (student_2, teacher_2)
    assert swd(student, 1) < 0.5 * swd(teacher_copy, 1)
    assert time.perf_counter() - start < 60
