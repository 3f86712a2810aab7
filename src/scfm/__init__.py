"""scfm: shortcut pretrained flow-matching models into few-step samplers (SCFM, arXiv 2510.17858).

Public API::

    result = scfm.distill(teacher, data, scfm.DistillConfig(...))
    x0 = scfm.sample(result, noise, steps=4, **cond)
    result.save("out/"); scfm.load("out/", fresh_teacher)
"""

from scfm.sampling import sample, solver_nfe
from scfm.train.config import DistillConfig
from scfm.train.loop import distill
from scfm.train.result import DistilledModel

load = DistilledModel.load

__all__ = ["DistillConfig", "DistilledModel", "distill", "load", "sample", "solver_nfe"]
__version__ = "0.1.0"
