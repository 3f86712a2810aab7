"""Score samplers on the built-in digits task: one row per (model, solver, steps).

Rows follow the ``metrics.json`` schema of DESIGN.md:
``{"model", "solver", "steps", "nfe", "fd", "class_acc"}``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from scfm.data.digits import NUM_CLASSES
from scfm.eval.metrics import EVAL_SAMPLES, DigitsEvaluator
from scfm.sampling import sample, solver_nfe


@dataclass
class DigitsEvalSet:
    """Fixed noise [N, 1, 8, 8] and class labels [N] (N / 10 per class) for every sampler."""

    noise: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def make(cls, n: int = EVAL_SAMPLES, seed: int = 1234, device: str | torch.device = "cpu") -> DigitsEvalSet:
        gen = torch.Generator().manual_seed(seed)
        labels = torch.arange(NUM_CLASSES).repeat_interleave(max(1, n // NUM_CLASSES))
        noise = torch.randn(labels.shape[0], 1, 8, 8, generator=gen)
        return cls(noise=noise.to(device), labels=labels.to(device))


def sample_digits(
    model: Callable, evalset: DigitsEvalSet, steps: int, solver: str = "euler", batch: int = 500, **kw
) -> torch.Tensor:
    """Sample the eval set in chunks of ``batch``; returns images [N, 1, 8, 8]."""
    outs = []
    for i in range(0, evalset.noise.shape[0], batch):
        if solver == "consistency":  # its re-noising is seeded per chunk, so rows are reproducible
            kw["generator"] = torch.Generator(device=evalset.noise.device).manual_seed(i)
        outs.append(
            sample(
                model,
                evalset.noise[i : i + batch],
                steps=steps,
                solver=solver,
                label=evalset.labels[i : i + batch],
                **kw,
            )
        )
    return torch.cat(outs)


def score_row(
    model: Callable, name: str, solver: str, steps: int, evalset: DigitsEvalSet, evaluator: DigitsEvaluator, **kw
) -> dict:
    images = sample_digits(model, evalset, steps, solver, **kw)
    scores = evaluator.evaluate(images, evalset.labels)
    return {
        "model": name,
        "solver": solver,
        "steps": steps,
        "nfe": solver_nfe(solver, steps),
        "fd": round(scores.fd, 4),
        "class_acc": round(scores.class_acc, 4),
    }


def score_rows(
    model: Callable,
    name: str,
    plan: Iterable[tuple[str, int]],
    evalset: DigitsEvalSet,
    evaluator: DigitsEvaluator,
    **kw,
) -> list[dict]:
    """Rows for every (solver, steps) in ``plan``."""
    return [score_row(model, name, solver, steps, evalset, evaluator, **kw) for solver, steps in plan]
