"""``scfm.distill``: the training loop, short and boring. The state lives in
:class:`~scfm.train.engine.Distiller`; this file feeds it batches, logs, checkpoints."""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from scfm.distilled import DistilledModel
from scfm.fileio import atomic_write_text
from scfm.train.checkpoint import resolve_resume, save_checkpoint
from scfm.train.config import DistillConfig
from scfm.train.engine import Distiller, world
from scfm.train.run_log import RunLogger
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


def _cycle(data: Iterable[dict], first_iter: Iterator[dict]) -> Iterator[dict]:
    """Yield from ``first_iter``, then start new passes over ``data`` (finite loaders)."""
    yield from first_iter
    while True:
        again = iter(data)
        if again is first_iter:
            warnings.warn("data ran out (a one-shot iterator); training stops early", stacklevel=2)
            return
        got = False
        for batch in again:
            got = True
            yield batch
        if not got:
            return


def _prepare_stream(
    data, config: DistillConfig, engine: Distiller, resume: str | None, teacher: nn.Module, device
) -> Iterator[dict]:
    batches = iter(data)
    try:
        first = next(batches)
    except StopIteration:
        raise ValueError("data yielded no batch; pass an iterable of {'x0': tensor, ...} dicts") from None
    check_batch(first, teacher, device)
    stream = _cycle(data, itertools.chain([first], batches))
    if resume is None:
        return stream
    if config.output_dir is None and resume == "latest":
        raise ValueError("resume='latest' needs output_dir (where the checkpoints are)")
    groups, meta, path = resolve_resume(config.output_dir, resume)
    engine.load_state_groups(groups, meta)
    consumed = int(meta.get("batches_consumed", 0))
    if "data" in groups and hasattr(data, "load_state_dict"):
        data.load_state_dict(groups["data"])
        next(stream)  # drop the peeked batch: the restored source continues after `consumed`
    else:
        for _ in range(consumed):
            next(stream)
    print(f"resumed from {path} at step {engine.step}")
    return stream


def _save(engine: Distiller, data, config: DistillConfig, consumed: int) -> None:
    if config.output_dir is None:
        return
    if engine.rank == 0:
        data_state = data.state_dict() if hasattr(data, "state_dict") else None
        groups, meta = engine.state_groups(data_state)
        meta["batches_consumed"] = consumed
        save_checkpoint(config.output_dir, engine.step, groups, meta, keep=config.keep_checkpoints)
    if world()[1] > 1:
        dist.barrier()


def distill(
    teacher: nn.Module,
    data: Iterable[dict],
    config: DistillConfig | None = None,
    *,
    progress: bool = True,
    resume: str | None = None,
    on_log: Callable[[dict[str, Any], Distiller], None] | None = None,
    on_validate: Callable[[Distiller], None] | None = None,
) -> DistilledModel:
    """Shortcut ``teacher`` (``forward(x, t, **cond) -> v``, t = 1 is noise) with SCFM.

    ``data`` yields ``{"x0": [B, ...], **cond}`` (B is the global batch; with several
    processes each trains on its slice). The teacher is modified in place: its weights are
    frozen and LoRA layers are added, so teacher, student and both EMAs share one copy of
    the base weights. With ``config.output_dir`` the run saves its config, checkpoints every
    ``checkpoint_every`` steps and at the end (also on Ctrl-C), logs, and the final LoRA;
    ``resume`` ('latest' or a checkpoint folder) continues a run exactly. Returns a
    :class:`DistilledModel` whose LoRA carries ``config.final_weights``.
    """
    config = (config or DistillConfig()).validate()
    if has_lora(teacher):
        raise ValueError("teacher already has LoRA layers; pass the plain base model (or fuse the LoRA first)")
    if not matching_modules(teacher, config.lora):
        attach_lora(teacher, config.lora)  # raises the error that lists the Linear names
    device = resolve_device(config.device, teacher)
    teacher.to(device).eval()
    if config.gradient_checkpointing:
        if not hasattr(teacher, "enable_gradient_checkpointing"):
            raise ValueError(
                f"gradient_checkpointing=True but {type(teacher).__name__} has no enable_gradient_checkpointing(); "
                "set it to false"
            )
        teacher.enable_gradient_checkpointing()
    seq_len_fn = getattr(teacher, "seq_len", None)
    engine = Distiller(teacher, config, device, seq_len_fn if callable(seq_len_fn) else None)
    stream = _prepare_stream(data, config, engine, resume, teacher, device)
    if config.compile:
        engine.model.forward = torch.compile(engine.model.forward)
    logger = RunLogger(config) if config.output_dir and engine.rank == 0 else None
    if logger is not None:
        from scfm.train.yaml_config import dump_config

        atomic_write_text(f"{config.output_dir}/config.yaml", dump_config(config))
    consumed = engine.step * config.grad_accum
    bar = tqdm(
        total=config.max_steps, initial=engine.step, desc="scfm distill", disable=not progress or engine.rank != 0
    )
    last = time.perf_counter()
    try:
        while engine.step < config.max_steps:
            micro = list(itertools.islice(stream, config.grad_accum))
            if len(micro) < config.grad_accum:
                break
            consumed += len(micro)
            record = engine.train_step(micro)
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
            if (
                config.checkpoint_every
                and engine.step % config.checkpoint_every == 0
                and engine.step < config.max_steps
            ):
                _save(engine, data, config, consumed)
    except KeyboardInterrupt:
        _save(engine, data, config, consumed)
        bar.close()
        if logger is not None:
            logger.close()
        print(f"\ninterrupted at step {engine.step}; checkpoint written, resume with --resume latest")
        raise
    bar.close()
    _save(engine, data, config, consumed)
    result = engine.result()
    if config.output_dir and engine.rank == 0:
        result.save(config.output_dir)
    if logger is not None:
        logger.close()
    return result
