"""scfm: shortcut pretrained flow-matching models into few-step samplers (SCFM, arXiv 2510.17858).

Public API::

    student = scfm.distill(teacher, data, scfm.DistillConfig(...))   # an nn.Module: v = student(x, t, **cond)
    x0 = scfm.sample(student, noise, steps=4, **cond)
    student.save("out/"); student = scfm.load("out/", fresh_teacher)
"""

import scfm._quiet  # noqa: F401  (first: quiets the optional quantization libraries' import-time logs)
from scfm._version import __version__
from scfm.distilled import DistilledModel
from scfm.objective.plans import PlanConfig
from scfm.objective.step_scale import StepScale
from scfm.sampling import sample, solver_nfe
from scfm.train.config import DistillConfig
from scfm.train.loop import distill
from scfm.weights.lora import LoraSpec

load = DistilledModel.load

__all__ = [
    "__version__",
    "DistillConfig",
    "DistilledModel",
    "LoraSpec",
    "PlanConfig",
    "StepScale",
    "distill",
    "load",
    "sample",
    "solver_nfe",
]
