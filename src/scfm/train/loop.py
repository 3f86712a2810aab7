"""``scfm.distill``: the training loop, short and boring."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from scfm.train.config import DistillConfig
from scfm.train.result import DistilledModel
from scfm.train.step import ShortcutStep
from scfm.weights.ema import FastSlowEMA
from scfm.weights.lora import attach_lora, has_lora, lora_named_parameters, matching_modules


def resolve_device(name: str, model: nn.Module) -> torch.device:
    if name == "auto":
        param = next(model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")
    return torch.device(name)


def check_batch(batch: Any, teacher: nn.Module, device: torch.device) -> None:
    """Validate one data batch against the teacher before any training (raises ``ValueError``)."""
    if not isinstance(batch, dict) or "x0" not in batch:
        raise ValueError(f"data must yield dicts with an 'x0' tensor, got {type(batch).__name__}{'' if not isinstance(batch, dict) else ' with keys ' + str(sorted(batch))}")
    x0 = batch["x0"]
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
        raise ValueError(f"data x0 must be a floating-point tensor, got {getattr(x0, 'dtype', type(x0).__name__)}; convert it with x0.float()")
    if x0.dim() < 2:
        raise ValueError(f"data x0 has shape {tuple(x0.shape)}; expected [batch, ...] with at least 2 dims")
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and key != "x0" and value.shape[0] != x0.shape[0]:
            raise ValueError(f"data[{key!r}] has batch size {value.shape[0]} but x0 has {x0.shape[0]}; every tensor must share the batch dim")
    probe = {k: (v[:1].to(device) if isinstance(v, torch.Tensor) and v.dim() > 0 else v) for k, v in batch.items()}
    x = probe.pop("x0")
    try:
        with torch.no_grad():
            v = teacher(x, torch.full((1,), 0.5, device=device, dtype=x.dtype), **probe)
    except Exception as err:
        raise ValueError(f"teacher(x0[:1], t, **cond) failed on the first data batch (x0 shape {tuple(x0.shape)}, dtype {x0.dtype}): {err}") from err
    if not isinstance(v, torch.Tensor) or v.shape != x.shape:
        raise ValueError(f"teacher returned {getattr(v, 'shape', type(v).__name__)} for x0[:1] of shape {tuple(x.shape)}; the velocity must have x's shape")


def _to_device(batch: dict, device: torch.device) -> tuple[torch.Tensor, dict]:
    moved = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    return moved.pop("x0"), moved


def distill(
    teacher: nn.Module,
    data: Iterable[dict],
    config: DistillConfig | None = None,
    *,
    progress: bool = True,
    on_log: Callable[[dict[str, Any], DistilledModel], None] | None = None,
) -> DistilledModel:
    """Shortcut ``teacher`` (``forward(x, t, **cond) -> v``, t = 1 is noise) with SCFM.

    ``data`` yields ``{"x0": [B, ...], **cond}``. The teacher is modified in place: its
    weights are frozen and LoRA layers are added, so teacher, student and both EMAs share
    one copy of the base weights. Returns a :class:`DistilledModel` whose LoRA carries
    ``config.final_weights``. ``on_log(record, result)`` is called every ``log_every`` steps.
    """
    config = (config or DistillConfig()).validate()
    if has_lora(teacher):
        raise ValueError("teacher already has LoRA layers; pass the plain base model (or fuse the LoRA first)")
    if not matching_modules(teacher, config.lora_spec()):
        attach_lora(teacher, config.lora_spec())  # raises the error that lists the Linear names
    device = resolve_device(config.device, teacher)
    teacher.to(device).eval()
    batches = iter(data)
    try:
        first = next(batches)
    except StopIteration:
        raise ValueError("data yielded no batch; pass an iterable of {'x0': tensor, ...} dicts") from None
    check_batch(first, teacher, device)
    model = attach_lora(teacher, config.lora_spec())
    named = lora_named_parameters(model)
    params = [p for _, p in named]
    ema = FastSlowEMA([n for n, _ in named], params, config.fast_decay, config.slow_decay)
    step_fn = ShortcutStep(model, params, ema, config.plan_config(), config.mixed_precision)
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, config.warmup_steps)))
    plan_gen = torch.Generator().manual_seed(config.seed)
    noise_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
    result = DistilledModel(model=model, config=config)
    bar = tqdm(range(config.max_steps), desc="scfm distill", disable=not progress)
    for step, batch in zip(bar, itertools.chain([first], batches)):
        x0, cond = _to_device(batch, device)
        out = step_fn.loss(x0, cond, plan_gen, noise_gen)
        if not torch.isfinite(out.loss.total):
            raise FloatingPointError(f"loss is {out.loss.total.item()} at step {step}; lower lr (now {config.lr}) or grad_clip, or check the data")
        opt.zero_grad(set_to_none=True)
        out.loss.total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip if config.grad_clip > 0 else math.inf)
        opt.step()
        sched.step()
        ema.update(params)
        if config.ema_restart_every and (step + 1) % config.ema_restart_every == 0:
            ema.reset_to(params)
        if (step + 1) % config.log_every == 0 or step + 1 == config.max_steps:
            record = {
                "step": step + 1,
                "loss": out.loss.total.item(),
                "loss_teacher": out.loss.teacher.item(),
                "loss_self": out.loss.self_.item(),
                "loss_fm": out.loss.fm.item(),
                "consistency_residual": out.residual.item(),
                "grad_norm": float(grad_norm),
                "lr": sched.get_last_lr()[0],
            }
            result.history.append(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
            if on_log is not None:
                on_log(record, result)
    result.weights = {
        "student": {n: p.detach().clone() for n, p in _named_state(named)},
        "fast_ema": _strip(ema.copy("fast")),
        "slow_ema": _strip(ema.copy("slow")),
    }
    result.use_weights(config.final_weights)
    model.eval()
    return result


def _named_state(named):
    return [(n.replace(".default", ""), p) for n, p in named]


def _strip(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n.replace(".default", ""): t.detach().clone() for n, t in tensors.items()}
