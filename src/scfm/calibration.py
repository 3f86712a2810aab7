"""Choose the LoRA scale per step count: the spec's sampling knob, set by measurement.

One student velocity field serves every jump size (SCFM has no step-size input), so its
LoRA delta is a compromise between jumps: fewer steps usually want a scale above 1, more
steps a scale below 1 (toward the teacher). :func:`calibrate_lora_scales` searches, for
each step count, the scale whose Euler samples minimise a distance the caller supplies
(FD to reference images, MSE to the teacher's many-step samples on the same noise, ...).
Calibrate on noise that is not the evaluation noise, so reported numbers stay honest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from scfm.distilled import DistilledModel
from scfm.sampling import sample

SamplerFn = Callable[[int, float], torch.Tensor]
"""``samples = fn(steps, lora_scale)``: the student's Euler samples on the calibration noise."""

DistanceFn = Callable[[torch.Tensor], float]
"""``d = fn(samples)``: lower is better (e.g. FD to a reference set)."""


@dataclass(frozen=True)
class ScaleSearch:
    """Walk from ``start`` in steps of ``step`` toward lower distance, within [lo, hi]."""

    start: float = 1.0
    step: float = 0.1
    lo: float = 0.0
    hi: float = 2.0

    def validate(self) -> ScaleSearch:
        if not 0 <= self.lo <= self.start <= self.hi:
            raise ValueError(f"scale search needs 0 <= lo={self.lo} <= start={self.start} <= hi={self.hi}")
        if self.step <= 0:
            raise ValueError(f"scale search step={self.step} must be > 0")
        return self


@dataclass
class ScaleCalibration:
    """scales: steps -> chosen LoRA scale. tried: steps -> {scale: distance} for every scale measured."""

    scales: dict[int, float] = field(default_factory=dict)
    tried: dict[int, dict[float, float]] = field(default_factory=dict)


def _walk(score: Callable[[float], float], search: ScaleSearch) -> dict[float, float]:
    """Distances at the scales visited: the start, its neighbours, then downhill until it rises."""
    tried: dict[float, float] = {}

    def at(scale: float) -> float:
        scale = round(scale, 6)  # 0.1-steps land on the same keys from either side
        if scale not in tried:
            tried[scale] = score(scale)
        return tried[scale]

    at(search.start)
    for direction in (-1.0, 1.0):
        current = search.start
        while True:
            nxt = current + direction * search.step
            if not search.lo - 1e-9 <= nxt <= search.hi + 1e-9 or at(nxt) >= at(current):
                break
            current = nxt
    return tried


def calibrate_lora_scales(
    sampler: SamplerFn,
    distance: DistanceFn,
    steps: Iterable[int] = (1, 2, 3, 4, 8),
    search: ScaleSearch | None = None,
    progress: bool = False,
    base_scales: Mapping[int, float] | None = None,
) -> ScaleCalibration:
    """For each step count, the LoRA scale with the lowest ``distance`` of ``sampler`` samples.

    A local search (``search``; default: from 1.0 in steps of 0.1 within [0, 2]; 0 is the teacher) costs
    3-6 sampler calls per step count instead of a full sweep; the distance as a function of
    the scale is unimodal in every case measured (BENCHMARKS.md). ``progress``: a bar over the step counts.
    ``base_scales`` {steps: scale}: search multiples of these (a model trained with a step scale,
    :meth:`DistilledModel.trained_scale`) instead of multiples of 1; the result holds the scales themselves.
    """
    from tqdm.auto import tqdm

    search = (search or ScaleSearch()).validate()
    steps = list(steps)
    for n in steps:
        if n < 1:
            raise ValueError(f"steps contains {n}; step counts must be >= 1")
    out = ScaleCalibration()
    with tqdm(steps, desc="LoRA-scale calibration", unit="step count", disable=not progress) as bar:
        for n in bar:
            base = float((base_scales or {}).get(n, 1.0))
            tried = _walk(lambda k, n=n, base=base: float(distance(sampler(n, base * k))), search)
            tried = {round(base * k, 6): d for k, d in tried.items()}
            out.tried[n] = dict(sorted(tried.items()))
            out.scales[n] = min(tried, key=tried.get)
            bar.set_postfix_str(f"{n} steps: scale {out.scales[n]:g}")
    return out


def paired_mse(reference: torch.Tensor) -> DistanceFn:
    """Distance for models without a feature network: mean squared error to ``reference``
    [N, ...], the teacher's many-step samples from the same noise (lower = closer to the
    teacher's own ODE map)."""

    def distance(samples: torch.Tensor) -> float:
        if samples.shape != reference.shape:
            raise ValueError(
                f"samples.shape={tuple(samples.shape)} must equal reference.shape={tuple(reference.shape)}"
            )
        return float(((samples.float() - reference.to(samples.device).float()) ** 2).mean())

    return distance


def calibrate_against_teacher(
    student: DistilledModel,
    noise: torch.Tensor,
    cond: dict[str, Any],
    steps: Iterable[int] = (1, 2, 3, 4, 8),
    teacher_steps: int = 32,
    shift: float | None = None,
    search: ScaleSearch | None = None,
    progress: bool = False,
) -> ScaleCalibration:
    """LoRA scale per step count that brings the student's Euler samples closest (paired MSE) to the
    teacher's ``teacher_steps``-step Euler samples from the same ``noise`` [N, ...] and ``cond``.

    The teacher is the same module at LoRA scale 0, so no second copy of the base is needed. The
    noise and cond must be held out from training (fresh noise, batches the run did not train
    on), and never the data a reported number is scored on.
    """
    # the bare module at scale 0: the teacher as trained against (guided, even for a baked-CFG student)
    reference = sample(student.model, noise, steps=teacher_steps, shift=shift, lora_scale=0.0, **cond)
    steps = list(steps)
    return calibrate_lora_scales(
        lambda n, scale: sample(student, noise, steps=n, shift=shift, lora_scale=scale, **cond),
        paired_mse(reference),
        steps=steps,
        search=search,
        progress=progress,
        base_scales={n: student.trained_scale(n) for n in steps},
    )
