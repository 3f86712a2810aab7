"""``scfm.distill``: the training loop, short and boring. The state lives in
:class:`~scfm.train.engine.Distiller`; this file feeds it batches, logs, checkpoints, and guards
the run: a run folder holds one run, a resume keeps the checkpoint's config (or says what changes),
SIGINT / SIGTERM stop at a step boundary with an exact checkpoint, and the result is saved first."""

from __future__ import annotations

import itertools
import signal
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from scfm.distilled import DistilledModel
from scfm.fileio import atomic_write_json, atomic_write_text
from scfm.train.checkpoint import (
    checkpoint_path,
    save_checkpoint,
)
from scfm.train.config import DistillConfig
from scfm.train.engine import Distiller, world
from scfm.train.held_out import held_out_calibration
from scfm.train.run_folder import (
    CALIBRATION_FILE,
    RESUME_HINT,
    ResumePoint,
    claim_on_all_ranks,
    open_resume,
    set_aside_newer_checkpoints,
    trim_metrics,
)
from scfm.train.run_log import RunLogger
from scfm.train.signals import StopSignals, exit_exception
from scfm.weights.lora import attach_lora, has_lora, matching_modules


def resolve_device(name: str, model: nn.Module) -> torch.device:
    if name == "auto":
        param = next(model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")
    return torch.device(name)


def check_batch(batch: Any, teacher: nn.Module, device: torch.device) -> None:
    """Validate one data batch against the teacher before any training (raises ``ValueError``)."""
    if not isinstance(batch, dict) or "x0" not in batch:
        keys = f" with keys {sorted(batch)}" if isinstance(batch, dict) else ""
        raise ValueError(f"data must yield dicts with an 'x0' tensor, got {type(batch).__name__}{keys}")
    x0 = batch["x0"]
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
        raise ValueError(
            f"data x0 must be a floating-point tensor, got {getattr(x0, 'dtype', type(x0).__name__)}; "
            "convert it with x0.float()"
        )
    if x0.dim() < 2:
        raise ValueError(f"data x0 has shape {tuple(x0.shape)}; expected [batch, ...] with at least 2 dims")
    for key, value in batch.items():
        if (
            isinstance(value, torch.Tensor)
            and value.dim() > 0
            and key != "x0"
            and value.shape[0] not in (x0.shape[0], 1)
        ):
            raise ValueError(
                f"data[{key!r}] has batch size {value.shape[0]} but x0 has {x0.shape[0]}; "
                "every tensor must share the batch dim (or have size 1 to broadcast)"
            )
    if not torch.isfinite(x0).all():
        raise ValueError("data x0 of the first batch holds nan/inf; every x0 must be finite")
    probe = {k: (v[:1].to(device) if isinstance(v, torch.Tensor) and v.dim() > 0 else v) for k, v in batch.items()}
    x = probe.pop("x0")
    try:
        with torch.no_grad():
            v = teacher(x, torch.full((1,), 0.5, device=device, dtype=x.dtype), **probe)
    except Exception as err:
        raise ValueError(
            "teacher(x0[:1], t, **cond) failed on the first data batch "
            f"(x0 shape {tuple(x0.shape)}, dtype {x0.dtype}): {err}"
        ) from err
    if not isinstance(v, torch.Tensor) or v.shape != x.shape:
        raise ValueError(
            f"teacher returned {getattr(v, 'shape', type(v).__name__)} for x0[:1] of shape {tuple(x.shape)}; "
            "the velocity must have x's shape"
        )
    if not torch.isfinite(v).all():
        raise ValueError(
            "the teacher returned nan/inf for x0[:1] of the first batch at t=0.5 (the input was finite): "
            "check the teacher's weights and dtype (fp16 overflows) and its cond inputs"
        )


def _cycle(data: Iterable[dict], first_iter: Iterator[dict]) -> Iterator[dict]:
    """Yield from ``first_iter``, then start new passes over ``data`` (finite loaders); ends when a
    pass yields nothing (a one-shot iterator or generator: the loop warns that the data ran out)."""
    yield from first_iter
    while True:
        got = False
        for batch in iter(data):
            got = True
            yield batch
        if not got:
            return


def _prepare_stream(
    data: Iterable[dict], engine: Distiller, checkpoint: ResumePoint | None, teacher: nn.Module, device: torch.device
) -> tuple[Iterator[dict], int]:
    """(the batch stream, the number of batches already consumed); restores ``checkpoint`` into ``engine``."""
    batches = iter(data)
    try:
        first = next(batches)
    except StopIteration:
        raise ValueError("data yielded no batch; pass an iterable of {'x0': tensor, ...} dicts") from None
    check_batch(first, teacher, device)
    stream = _cycle(data, itertools.chain([first], batches))
    if checkpoint is None:
        return stream, 0
    engine.load_state_groups(checkpoint.groups, checkpoint.meta)
    if any(name == "seed" for name, _, _ in checkpoint.changes):
        engine.restart_generators()
    engine.checkpoint = str(checkpoint.path)
    consumed = int(checkpoint.meta.get("batches_consumed", 0))
    if "data" in checkpoint.groups and hasattr(data, "load_state_dict"):
        data.load_state_dict(checkpoint.groups["data"])
        next(stream)  # drop the peeked batch: the restored source continues after `consumed`
    elif sum(1 for _ in itertools.islice(stream, consumed)) < consumed:
        raise ValueError(
            f"data ran out while skipping the {consumed} batches the checkpoint {str(checkpoint.path)!r} had "
            "consumed; resume with the same data"
        )
    if engine.rank == 0:
        print(f"resumed from {checkpoint.path} at step {engine.step}")
    return stream, consumed


@dataclass
class _Progress:
    """Where the loop is: batches consumed, whether the engine is at a step boundary, the state the
    newest checkpoint holds, and why the loop ended early."""

    consumed: int
    at_boundary: bool = True
    saved_at: tuple[int, int] | None = None
    ran_out: bool = False
    stop_agreed: bool = False


def _state(engine: Distiller, data: Any, progress: _Progress, clone: bool = False) -> tuple[dict, dict]:
    """The checkpoint's (tensor groups, state) at this step boundary; ``clone`` copies the live LoRA
    tensors (for a checkpoint written after :meth:`Distiller.result` loads the final weights)."""
    groups, meta = engine.state_groups(data.state_dict() if hasattr(data, "state_dict") else None)
    if clone:
        groups["lora"] = {name: tensor.detach().clone() for name, tensor in groups["lora"].items()}
    meta["batches_consumed"] = progress.consumed
    return groups, meta


def _save(
    engine: Distiller, data: Any, config: DistillConfig, progress: _Progress, state: tuple[dict, dict] | None = None
) -> str | None:
    """Checkpoint the state at this step boundary (or ``state``, taken there by :func:`_state`; every
    process calls it, rank 0 writes) unless the newest checkpoint already holds it; returns the
    checkpoint's folder (None without output_dir)."""
    if config.output_dir is None:
        return None
    if progress.saved_at == (engine.step, progress.consumed):
        return engine.checkpoint
    try:
        if engine.rank == 0:
            groups, meta = state or _state(engine, data, progress)
            save_checkpoint(config.output_dir, engine.step, groups, meta, keep=config.keep_checkpoints)
    finally:
        if world()[1] > 1:
            dist.barrier()
    engine.checkpoint = str(checkpoint_path(config.output_dir, engine.step))
    progress.saved_at = (engine.step, progress.consumed)
    return engine.checkpoint


def _newest(engine: Distiller) -> str:
    return f"the newest checkpoint is {engine.checkpoint}" if engine.checkpoint else "no checkpoint was written"


def distill(
    teacher: nn.Module,
    data: Iterable[dict],
    config: DistillConfig | None = None,
    *,
    progress: bool = True,
    resume: str | None = None,
    on_log: Callable[[dict[str, Any], Distiller], None] | None = None,
    on_validate: Callable[[Distiller], None] | None = None,
    overwrite: bool = False,
    allow_config_change: bool = False,
) -> DistilledModel:
    """Shortcut ``teacher`` (``forward(x, t, **cond) -> v``, t = 1 is noise) with SCFM.

    ``data`` yields ``{"x0": [B, ...], **cond}`` (B is the global batch; with several
    processes each trains on its slice). The teacher is modified in place: its weights are
    frozen and LoRA layers are added, so teacher, student and both EMAs share one copy of
    the base weights. With ``config.output_dir`` the run saves its config, checkpoints every
    ``checkpoint_every`` steps and at the end, logs, and the final LoRA (written before the final
    checkpoint). A folder that holds another run stops a new run before training unless
    ``overwrite`` (the old run is moved aside, never deleted). ``resume`` ('latest' or a checkpoint
    folder) continues a run exactly; a config that differs from the checkpoint's outside
    :data:`~scfm.train.checkpoint.RESUMABLE_FIELDS` stops it unless ``allow_config_change``.
    SIGINT / SIGTERM (main thread) finish the step under way, write an exact checkpoint and raise
    ``KeyboardInterrupt`` / ``SystemExit(143)``. Returns a :class:`DistilledModel` whose LoRA carries
    ``config.final_weights``.
    """
    config = (config or DistillConfig()).validate()
    if has_lora(teacher):
        raise ValueError("teacher already has LoRA layers; pass the plain base model (or fuse the LoRA first)")
    if not matching_modules(teacher, config.lora):
        attach_lora(teacher, config.lora)  # raises the error that lists the Linear names
    device = resolve_device(config.device, teacher)
    config.check_runnable(device)
    checkpoint = open_resume(config, resume, allow_config_change) if resume is not None else None
    continuing = checkpoint is not None and checkpoint.inside(config.output_dir)
    if overwrite and continuing:
        raise ValueError(
            f"overwrite=True with resume={resume!r}: the checkpoint is in output_dir={config.output_dir!r}, which "
            "overwrite would move aside; drop overwrite to continue the run, or resume to start a new one"
        )
    if config.output_dir and not continuing:
        claim_on_all_ranks(config.output_dir, overwrite, device)
    if config.base_quantization == "none":  # a quantized base moves to the device layer by layer as it is quantized
        teacher.to(device)
    teacher.eval()
    if config.gradient_checkpointing:
        if not hasattr(teacher, "enable_gradient_checkpointing"):
            raise ValueError(
                f"gradient_checkpointing=True but {type(teacher).__name__} has no enable_gradient_checkpointing(); "
                "set it to false"
            )
        teacher.enable_gradient_checkpointing()
    seq_len_fn = getattr(teacher, "seq_len", None)
    engine = Distiller(teacher, config, device, seq_len_fn if callable(seq_len_fn) else None)
    if engine.quantized and progress and engine.rank == 0:
        before, after = (f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB" for n in engine.base_bytes)
        print(
            f"base_quantization={config.base_quantization}: {len(engine.quantized)} Linear layers, "
            f"frozen base {before} -> {after}"
        )
    stream, consumed = _prepare_stream(data, engine, checkpoint, teacher, device)
    if config.compile:
        engine.model.forward = torch.compile(engine.model.forward)
    writer = config.output_dir is not None and engine.rank == 0
    if writer and continuing:
        set_aside_newer_checkpoints(config.output_dir, engine.step)
        trim_metrics(config.output_dir, engine.step)
    logger = RunLogger(config) if writer else None
    engine.logger = logger
    if logger is not None:
        from scfm.train.yaml_config import dump_config

        atomic_write_text(f"{config.output_dir}/config.yaml", dump_config(config))
    state = _Progress(consumed, saved_at=(engine.step, consumed) if checkpoint is not None else None)
    return _train(engine, stream, data, config, state, logger, progress, on_log, on_validate)


def _train(
    engine: Distiller,
    stream: Iterator[dict],
    data: Any,
    config: DistillConfig,
    state: _Progress,
    logger: RunLogger | None,
    progress: bool,
    on_log: Callable[[dict[str, Any], Distiller], None] | None,
    on_validate: Callable[[Distiller], None] | None,
) -> DistilledModel:
    """Run the steps under :class:`StopSignals`, then save the result and the final checkpoint."""
    bar = tqdm(
        total=config.max_steps, initial=engine.step, desc="scfm distill", disable=not progress or engine.rank != 0
    )
    say = print if engine.rank == 0 else (lambda *args, **kwargs: None)
    with StopSignals() as stop:
        try:
            _steps(engine, stream, data, config, state, stop, bar, logger, on_log, on_validate)
        except (KeyboardInterrupt, SystemExit):
            if stop.forced or not state.at_boundary:  # a second signal, or an interrupt inside a step
                when = f"after step {engine.step}" if state.at_boundary else f"during step {engine.step + 1}"
                say(f"\nstopped at once {when}: no checkpoint of it; {_newest(engine)}", flush=True)
            else:  # a KeyboardInterrupt from a callback, between steps: the state is exact
                path = _save(engine, data, config, state)
                where = f"exact checkpoint {path}" if path else "no checkpoint (output_dir is None)"
                say(f"\ninterrupted after step {engine.step}; {where}; continue with {RESUME_HINT}", flush=True)
            raise
        finally:
            bar.close()
            if logger is not None:
                logger.close()
        if state.stop_agreed:
            signum = stop.signum or signal.SIGTERM  # a process that saw no signal follows the others
            path = _save(engine, data, config, state)
            where = f"exact checkpoint {path}" if path else "no checkpoint (output_dir is None)"
            say(
                f"\n{signal.Signals(signum).name}: stopped after step {engine.step} of {config.max_steps}; {where}; "
                f"continue with {RESUME_HINT}",
                flush=True,
            )
            raise exit_exception(signum)
        if state.ran_out:
            warnings.warn(
                f"data ran out at step {engine.step} of max_steps={config.max_steps} (a one-shot iterator or "
                "generator gives one pass; pass a list or a DataLoader to cycle); saving the result of this step",
                stacklevel=3,
            )
        result = _finish(engine, data, config, state)
        if config.calibrate:
            _calibrate(result, stream, config, engine, progress)
        if config.output_dir and engine.rank == 0:
            _write_card(result, config)
        if stop.signum is not None:  # the signal came in the last step or while saving: all is saved
            say(f"\n{signal.Signals(stop.signum).name}: finished and saved all {engine.step} steps; stopping")
            raise exit_exception(stop.signum)
    return result


def _steps(
    engine: Distiller,
    stream: Iterator[dict],
    data: Any,
    config: DistillConfig,
    state: _Progress,
    stop: StopSignals,
    bar: Any,
    logger: RunLogger | None,
    on_log: Callable[[dict[str, Any], Distiller], None] | None,
    on_validate: Callable[[Distiller], None] | None,
) -> None:
    """Optimizer steps until ``max_steps``, a stop signal (checked at each step boundary) or the end of the data."""
    last = time.perf_counter()
    while engine.step < config.max_steps:
        if engine.any_rank(stop.signum is not None):
            state.stop_agreed = True
            return
        state.at_boundary = False
        micro = list(itertools.islice(stream, config.grad_accum))
        if len(micro) < config.grad_accum:
            state.at_boundary, state.ran_out = True, True
            return
        record = engine.train_step(micro)
        state.consumed += len(micro)
        state.at_boundary = True
        if record is None:
            continue
        bar.update(1)
        if engine.step % config.log_every == 0 or engine.step == config.max_steps:
            now = time.perf_counter()
            record["samples_per_s"] = (
                config.log_every * config.grad_accum * micro[0]["x0"].shape[0] / max(now - last, 1e-9)
            )
            record["skipped_steps"] = engine.skipped
            last = now
            engine.history.append(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
            if logger is not None:
                logger.log(record)
            if on_log is not None:
                on_log(record, engine)
        if on_validate is not None and config.validate_every and engine.step % config.validate_every == 0:
            on_validate(engine)
        if config.checkpoint_every and engine.step % config.checkpoint_every == 0 and engine.step < config.max_steps:
            _save(engine, data, config, state)


def _finish(engine: Distiller, data: Any, config: DistillConfig, progress: _Progress) -> DistilledModel:
    """Save the result (the LoRA) into output_dir, then the final checkpoint. A failed checkpoint
    write warns and keeps the result; a failed result write still tries the checkpoint, then raises."""
    if config.output_dir is None:
        return engine.result()
    state = _state(engine, data, progress, clone=True) if engine.rank == 0 else None
    result = engine.result()  # loads config.final_weights into the live LoRA tensors
    result_error: OSError | None = None
    if engine.rank == 0:
        try:
            result.save(config.output_dir)
        except OSError as err:
            result_error = err
    try:
        _save(engine, data, config, progress, state)
        checkpoint_error = None
    except OSError as err:
        checkpoint_error = err
    if result_error is not None:
        held = (
            f"the final checkpoint {engine.checkpoint} holds the trained state: free the disk and run again with "
            f"{RESUME_HINT} to write the result"
            if checkpoint_error is None
            else f"the final checkpoint failed too ({checkpoint_error}); {_newest(engine)}"
        )
        raise OSError(f"could not write the result to {config.output_dir!r} ({result_error}); {held}") from result_error
    if checkpoint_error is not None and engine.rank == 0:
        message = (
            f"the result is saved in {config.output_dir!r}, but the final checkpoint could not be written "
            f"({checkpoint_error}); {_newest(engine)} (training can continue from it with {RESUME_HINT})"
        )
        warnings.warn(message, stacklevel=4)
        print(f"warning: {message}")
    return result


def _write_card(result: DistilledModel, config: DistillConfig) -> None:
    """The run folder's README.md (:mod:`scfm.train.run_card`); a card that cannot be written warns, the run stands."""
    from scfm.train.run_card import write_run_card

    try:
        write_run_card(config.output_dir, result, config)
    except (OSError, ValueError) as err:
        warnings.warn(f"the run's model card was not written: {err}", stacklevel=4)


def _calibrate(
    result: DistilledModel, stream: Iterator[dict], config: DistillConfig, engine: Distiller, progress: bool
) -> None:
    """Choose the LoRA scale per step count on the next batch of the stream (never trained on) and
    rewrite the result with it; the search table goes to ``output_dir/calibration.json``."""
    calibration = held_out_calibration(result, stream, config, engine.device, progress and engine.rank == 0)
    if calibration is None:
        warnings.warn("no batch left for the LoRA-scale calibration (the data ran out): scales stay 1", stacklevel=4)
        return
    result.lora_scales = dict(calibration.scales)
    if engine.rank == 0:
        scales = ", ".join(f"{n} steps {k:g}" for n, k in sorted(calibration.scales.items()))
        print(f"LoRA scale per step count (held-out batch, paired MSE to the teacher): {scales}")
    if config.output_dir is None or engine.rank != 0:
        return
    result.save(config.output_dir)
    table = {
        "method": f"paired MSE to the teacher's {config.plan.teacher_max}-step Euler samples from the same noise",
        "data": "the first batch of the data stream after the last training batch (never trained on)",
        "samples": min(config.calibration_samples, config.batch_size),
        "noise_seed": config.seed + 3,
        "scales": {str(n): k for n, k in sorted(calibration.scales.items())},
        "tried": {str(n): {f"{k:g}": d for k, d in tried.items()} for n, tried in calibration.tried.items()},
    }
    atomic_write_json(Path(config.output_dir) / CALIBRATION_FILE, table)
