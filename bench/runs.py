"""Digits distillation runs for the benchmark scripts, cached so long suites resume.

Every run is the `scfm demo` preset (``scfm.train.presets.digits_config``) plus overrides, one
training seed, scored by the shipped digits evaluator at 1 / 2 / 3 / 4 / 8 steps on a fixed
eval noise seed (999, not the demo's 1234). Results are appended to
``bench/results/runs.jsonl`` keyed by everything that defines the run (including a hash of
the preset itself, so a changed preset is measured anew), so rerunning a script skips runs
already measured (delete the file to measure again).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import nullcontext
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = RESULTS / "runs.jsonl"
STEPS = (1, 2, 3, 4, 8)
RUN_VERSION = 2
"""Bump when the training code changes in a way that invalidates cached runs."""


def preset_tag(**changes: Any) -> str:
    """Short hash of the digits preset (with ``changes``): cached runs count only for the preset they measured."""
    from scfm.train.presets import digits_config

    values = digits_config(changes).to_dict()
    for name in AFTER_TRAINING_FIELDS:
        values.pop(name, None)
    for section, name, old_behaviour in FIELDS_ADDED_LATER:
        where = values[section] if section else values
        if where.get(name) == old_behaviour:
            del where[name]  # a field added after runs were cached, at the value they ran with
        if section and not where:
            del values[section]  # a whole section added later, every field at its old behaviour
    blob = json.dumps(values, sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


AFTER_TRAINING_FIELDS = ("calibrate", "calibration_steps", "calibration_samples")
"""Fields that act only after the last optimizer step (the run's own LoRA-scale calibration): they do not
change what a cached run trained or how this module scores it."""
FIELDS_ADDED_LATER = (
    (None, "ema_init", "params"),
    ("lora", "init", "kaiming"),
    (None, "base_quantization", "none"),
    (None, "optimizer", "adamw"),
    (None, "offload_ema", False),
    (None, "self_targets", "ema"),
    ("step_scale", "power", 0.0),
    ("step_scale", "ref_steps", 4.0),
)
"""(section, field, value that reproduces the runs measured before the field existed)."""


def run_key(spec: dict[str, Any]) -> str:
    return json.dumps({**spec, "version": RUN_VERSION}, sort_keys=True)


def _load_cache() -> dict[str, dict]:
    if not CACHE.exists():
        return {}
    out = {}
    for line in CACHE.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            out[row["key"]] = row
    return out


def _append(row: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(CACHE, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def few_shot_source(batch_size: int, seed: int, shots: int, subset_seed: int):
    """Digits batches drawn with replacement from ``shots`` training digits chosen by ``subset_seed``."""
    import torch

    from scfm.data.batches import DigitsBatches

    source = DigitsBatches(batch_size, seed=seed)
    pick = torch.randperm(source.labels.shape[0], generator=torch.Generator().manual_seed(subset_seed))[:shots]
    source.images, source.labels = source.images[pick], source.labels[pick]
    return source


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Train and score one run. ``spec``: overrides (DistillConfig fields by dotted name), seed,
    eval_seed, eval_samples, solver ('euler' or 'consistency'), shots / subset_seed (few-shot),
    curve_every (0: no training curve; else FD at 2 and 4 steps every that many steps), probe_every
    (0: none; else the self-target probe of :mod:`bench.self_probe` every that many steps), diversity
    (precision / recall / class spread of :mod:`bench.diversity`).
    Besides FD at LoRA scale 1 (final weights and raw student), it reports ``fd_calibrated``:
    Euler with the final weights at the LoRA scale per step count chosen on calibration noise
    exactly as ``scfm demo`` does (``lora_scales``)."""
    import torch

    import scfm
    from scfm.commands.demo import calibrate_demo_scales
    from scfm.data.batches import DigitsBatches
    from scfm.eval.harness import DigitsEvalSet, score_row, score_rows
    from scfm.eval.metrics import DigitsEvaluator
    from scfm.models.builtin import load_shipped_teacher
    from scfm.train.presets import digits_config

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    config = digits_config(spec["overrides"], seed=spec["seed"], calibrate=False)  # scored by its own calibration
    evaluator = DigitsEvaluator()
    evalset = DigitsEvalSet.make(spec.get("eval_samples", 1000), seed=spec.get("eval_seed", 999))
    if spec.get("shots"):
        data = few_shot_source(config.batch_size, config.seed, spec["shots"], spec["subset_seed"])
    else:
        data = DigitsBatches(config.batch_size, seed=config.seed)
    curve: list[dict] = []
    probe: list[dict] = []
    on_validate = _callbacks(spec, config, curve, probe, evalset, evaluator)
    start = time.perf_counter()
    result = scfm.distill(load_shipped_teacher("digits"), data, config, progress=False, on_validate=on_validate)
    seconds = time.perf_counter() - start
    solver = spec.get("solver", "euler")
    scores = {}
    for which in (config.final_weights, "student"):
        result.use_weights(which)
        scores[which] = score_rows(result, which, [(solver, n) for n in STEPS], evalset, evaluator)
    rows, raw = scores[config.final_weights], scores["student"]
    euler = None
    if solver != "euler":  # the same LoRA also sampled by plain Euler (SCFM's sampler)
        result.use_weights(config.final_weights)
        euler = [r["fd"] for r in score_rows(result, "euler", [("euler", n) for n in STEPS], evalset, evaluator)]
    result.use_weights(
        config.final_weights
    )  # Euler at the LoRA scale per step count chosen on calibration noise (as scfm demo)
    scales = calibrate_demo_scales(result, evaluator, spec.get("eval_samples", 1000)).scales
    calibrated = [
        score_row(result, "calibrated", "euler", n, evalset, evaluator, lora_scale=scales[n])["fd"] for n in STEPS
    ]
    diversity = None
    if spec.get("diversity"):  # precision / recall / class spread at the trained strength (bench/diversity.py)
        from diversity import measure_diversity

        result.lora_scales = {}
        diversity = measure_diversity(result, evalset, evaluator)
    history = [
        {k: r[k] for k in ("step", "loss", "loss_teacher", "loss_self", "consistency_residual")} for r in result.history
    ]
    return {
        "fd": [r["fd"] for r in rows],
        "class_acc": [r["class_acc"] for r in rows],
        "fd_student": [r["fd"] for r in raw],
        "fd_euler": euler,
        "fd_calibrated": calibrated,
        "lora_scales": [scales[n] for n in STEPS],
        "train_seconds": round(seconds, 1),
        "seconds": round(time.perf_counter() - start, 1),
        "curve": curve,
        "probe": probe,
        "diversity": diversity,
        "history": history if spec.get("curve_every") or spec.get("probe_every") else [],
    }


def _callbacks(spec: dict, config, curve: list[dict], probe: list[dict], evalset, evaluator) -> Callable | None:
    """The validation callback of a run: the FD curve (``curve_every``) and the self-target probe
    (``probe_every``, :mod:`bench.self_probe`), each at its own interval; None when neither is asked."""
    try:
        from self_probe import self_target_probe  # run as a script from bench/
    except ImportError:
        from bench.self_probe import self_target_probe  # imported as the bench package (tests)

    every = {"curve": spec.get("curve_every", 0), "probe": spec.get("probe_every", 0)}
    calls = {"curve": _curve_probe(curve, evalset, evaluator), "probe": self_target_probe(probe)}
    active = {name: n for name, n in every.items() if n}
    if not active:
        return None
    config.validate_every = math.gcd(*active.values())

    def on_validate(engine) -> None:
        for name, n in active.items():
            if engine.step % n == 0:
                calls[name](engine)

    return on_validate


def _curve_probe(curve: list[dict], evalset, evaluator) -> Callable:
    """A validation callback recording FD at 2 and 4 Euler steps of the final-weights LoRA copy."""
    from scfm.eval.harness import score_rows

    def probe(engine) -> None:
        which = engine.config.final_weights
        copy = {"slow_ema": engine.ema.slow, "fast_ema": engine.ema.fast}.get(which)
        ctx = engine.step_fn.switch.use(copy) if copy is not None else nullcontext()
        with ctx:
            rows = score_rows(engine.model, "probe", [("euler", 2), ("euler", 4)], evalset, evaluator)
        engine.model.train()
        curve.append({"step": engine.step, "fd2": rows[0]["fd"], "fd4": rows[1]["fd"]})

    return probe


def _worker(spec: dict) -> tuple[dict, dict]:
    return spec, measure(spec)


def run_all(specs: Iterable[dict[str, Any]], jobs: int = 2) -> list[dict]:
    """Results for ``specs`` (cached ones are read back), measuring the rest ``jobs`` at a
    time, each process on one thread. Returns rows in the order of ``specs``."""
    specs = list(specs)
    cache = _load_cache()
    todo = list({run_key(s): s for s in specs if run_key(s) not in cache}.values())  # each distinct run once
    if todo and os.environ.get("SCFM_BENCH_CACHED_ONLY") == "1":  # render tables from what has been measured
        print(f"SCFM_BENCH_CACHED_ONLY: {len(todo)} run(s) not measured, left out of the table", flush=True)
        return [cache[run_key(s)] for s in specs if run_key(s) in cache]
    if todo:
        distinct = len({run_key(s) for s in specs})
        print(
            f"{distinct - len(todo)} of {distinct} distinct runs cached; measuring {len(todo)} with {jobs} process(es)",
            flush=True,
        )
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for spec, out in (f.result() for f in as_completed([pool.submit(_worker, s) for s in todo])):
                row = {"key": run_key(spec), "spec": spec, **out}
                _append(row)
                cache[row["key"]] = row
                print(
                    f"  {json.dumps(spec['overrides'])} seed {spec['seed']}: FD {out['fd']} ({out['train_seconds']} s)",
                    flush=True,
                )
    return [cache[run_key(s)] for s in specs]


def spec(overrides: dict[str, Any] | None = None, seed: int = 0, **extra: Any) -> dict[str, Any]:
    """A run: the preset plus ``overrides`` (as dotted names; those equal to the preset are dropped,
    so equal runs share one cache entry), training ``seed``, eval settings and ``extra`` keys."""
    from scfm.train.config import dotted_values
    from scfm.train.presets import digits_config

    preset = dotted_values(digits_config().to_dict())
    changed = {k: v for k, v in dotted_values(overrides or {}).items() if _plain(preset.get(k)) != _plain(v)}
    return {"overrides": changed, "seed": seed, "eval_seed": 999, "eval_samples": 1000, "preset": preset_tag(), **extra}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
