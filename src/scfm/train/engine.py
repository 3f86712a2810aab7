"""The distillation engine: state, one optimizer step, checkpoints, multi-process.

Data parallelism without DDP wrapping: every process draws the same *global* batch, plan
and noise from identically seeded generators and trains on its own slice; LoRA gradients
are averaged with one all-reduce. Parameters and EMAs therefore stay identical on every
rank, and the run matches a 1-process run with the same global batch up to float
summation order. Launch with ``accelerate launch -m scfm distill ...`` (or torchrun).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from scfm.distilled import DistilledModel
from scfm.train.checkpoint import optimizer_from_tensors, optimizer_to_tensors
from scfm.train.config import DistillConfig
from scfm.train.step import STEP_CLASSES
from scfm.weights.ema import FastSlowEMA
from scfm.weights.lora import attach_lora, init_lora, lora_named_parameters


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _strip(name: str) -> str:
    return name.replace(".default", "")


def lr_factor(step: int, warmup: int, total: int, schedule: str, final_ratio: float) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based): linear warm-up over
    ``warmup`` steps, then 1 ('constant') or a 'cosine' / 'linear' decay that reaches
    ``final_ratio`` at step ``total``. Returns a float in [final_ratio, 1] after warm-up."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup + 1) / max(1, total - warmup))
    decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
    return final_ratio + (1.0 - final_ratio) * decay


class Distiller:
    """Holds the one base model with LoRA, both EMAs, optimizer, schedule and generators.

    ``model`` must already be on its device; LoRA is attached here. ``seq_len_fn(x0)``
    (optional) gives the token count for the resolution shift.
    """

    def __init__(self, model: nn.Module, config: DistillConfig, device: torch.device, seq_len_fn=None) -> None:
        self.config, self.device, self.seq_len_fn = config, device, seq_len_fn
        self.rank, self.world_size = world()
        if config.flush_denormal and device.type == "cpu":
            torch.set_flush_denormal(True)
        self.model = attach_lora(model, config.lora)
        init_lora(self.model, torch.Generator().manual_seed(config.seed))
        named = lora_named_parameters(self.model)
        self.names = [_strip(n) for n, _ in named]
        self.params = [p for _, p in named]
        self.ema = FastSlowEMA(self.names, self.params, config.fast_decay, config.slow_decay)
        self.step_fn = STEP_CLASSES[config.objective](
            self.model, self.params, self.ema, config.plan, config.mixed_precision, config.target_precision
        )
        self.opt = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self._lr_factor)
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.mixed_precision == "fp16")
        self.plan_gen = torch.Generator().manual_seed(config.seed)
        self.noise_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
        self.step = 0
        self.skipped = 0
        self.history: list[dict[str, Any]] = []

    def _lr_factor(self, step: int) -> float:
        c = self.config
        return lr_factor(step, c.warmup_steps, c.max_steps, c.lr_schedule, c.lr_final_ratio)

    def _local_slice(self, size: int) -> slice:
        if size % self.world_size:
            raise ValueError(
                f"batch size {size} is not divisible by the {self.world_size} processes; set batch_size to a multiple"
            )
        per = size // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)

    def micro_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of this process's slice of one global batch (scaled for averaging over ranks)."""
        x0_all = batch["x0"]
        size = x0_all.shape[0]
        plan = self.step_fn.draw(
            size,
            self.plan_gen,
            seq_len=self.seq_len_fn(x0_all) if self.seq_len_fn else None,
            dtype=x0_all.dtype,
            device=self.device,
        )
        eps_all = torch.randn(x0_all.shape, generator=self.noise_gen, device=self.device, dtype=x0_all.dtype)
        local = self._local_slice(size)
        plan = plan.select(local)
        x0 = x0_all[local].to(self.device, non_blocking=True)
        eps = eps_all[local]
        cond = {
            k: (
                v[local].to(self.device, non_blocking=True)
                if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == size
                else v
            )
            for k, v in batch.items()
            if k != "x0"
        }
        out = self.step_fn.loss(x0, eps, plan, cond)
        stats = {
            "loss": out.loss.total.detach(),
            "loss_teacher": out.loss.teacher,
            "loss_self": out.loss.self_,
            "loss_fm": out.loss.fm,
            "consistency_residual": out.residual,
        }
        return out.loss.total, stats

    def _all_reduce_grads(self) -> None:
        if self.world_size == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p, g in zip(self.params, grads):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def _all_reduce_flag(self, bad: bool) -> bool:
        if self.world_size == 1:
            return bad
        flag = torch.tensor([1.0 if bad else 0.0], device=self.device)
        dist.all_reduce(flag)
        return bool(flag.item() > 0)

    def train_step(self, batches: list[dict]) -> dict[str, float] | None:
        """One optimizer step over ``len(batches)`` accumulated global batches.

        Returns the logged record, or None when the step was skipped for a non-finite loss
        (``nan_policy='skip'``). Raises ``FloatingPointError`` for ``nan_policy='stop'``.
        """
        self.opt.zero_grad(set_to_none=True)
        totals = None
        for batch in batches:
            loss, stats = self.micro_loss(batch)
            self.scaler.scale(loss / len(batches)).backward()
            stacked = torch.stack([v.float() for v in stats.values()]) / len(batches)
            totals = stacked if totals is None else totals + stacked
        sums = dict(zip(stats.keys(), totals.tolist()))  # one device sync per step for all stats
        if self._all_reduce_flag(not math.isfinite(sums["loss"])):
            return self._non_finite(sums["loss"])
        self._all_reduce_grads()
        self.scaler.unscale_(self.opt)
        clip = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip))
        if self._all_reduce_flag(not math.isfinite(grad_norm)) and self.config.mixed_precision != "fp16":
            return self._non_finite(grad_norm, what="gradient norm")
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        self.ema.update(self.params)
        self.step += 1
        if self.config.ema_restart_every and self.step % self.config.ema_restart_every == 0:
            self.ema.reset_to(self.params)
        record = {"step": self.step, **sums, "grad_norm": grad_norm, "lr": self.sched.get_last_lr()[0]}
        return record

    def _non_finite(self, value: float, what: str = "loss") -> None:
        self.opt.zero_grad(set_to_none=True)
        if self.config.nan_policy == "stop":
            raise FloatingPointError(
                f"{what} is {value} at step {self.step + 1}: stopping (the last checkpoint is intact). "
                f"Lower lr (now {self.config.lr}) or grad_clip, check the data, or set nan_policy=skip"
            )
        self.skipped += 1
        if self.skipped > self.config.max_skipped_steps:
            raise FloatingPointError(
                f"{self.skipped} steps skipped for non-finite {what} "
                f"(max_skipped_steps={self.config.max_skipped_steps}); stopping"
            )
        return None

    # ---- checkpoint state -------------------------------------------------------------
    def state_groups(
        self, data_state: dict[str, torch.Tensor] | None
    ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
        opt_tensors, opt_meta = optimizer_to_tensors(self.opt)
        rng = {"plan": self.plan_gen.get_state(), "noise": self.noise_gen.get_state()}
        groups = {
            "lora": dict(zip(self.names, self.params)),
            "ema": self.ema.state_dict(),
            "optimizer": opt_tensors,
            "rng": rng,
        }
        if data_state:
            groups["data"] = data_state
        meta = {
            "optimizer": opt_meta,
            "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
            "skipped": self.skipped,
            "config": self.config.to_dict(),
            "history": self.history,
        }
        return groups, meta

    @torch.no_grad()
    def load_state_groups(self, groups: dict[str, dict[str, torch.Tensor]], meta: dict[str, Any]) -> None:
        lora = groups["lora"]
        if set(lora) != set(self.names):
            raise ValueError("checkpoint LoRA does not match this model/config (different lora.targets or model?)")
        torch._foreach_copy_(self.params, [lora[n].to(self.device) for n in self.names])
        self.ema.load_state_dict({k: v.to(self.device) for k, v in groups["ema"].items()})
        optimizer_from_tensors(
            self.opt,
            {
                k: v.to(self.device) if k.endswith(("exp_avg", "exp_avg_sq")) else v
                for k, v in groups["optimizer"].items()
            },
            meta["optimizer"],
        )
        self.sched.load_state_dict(meta["scheduler"])
        self.scaler.load_state_dict(meta["scaler"])
        self.plan_gen.set_state(groups["rng"]["plan"])
        self.noise_gen.set_state(groups["rng"]["noise"])
        self.step = int(meta["step"])
        self.skipped = int(meta.get("skipped", 0))
        self.history = list(meta.get("history", []))

    def result(self) -> DistilledModel:
        weights = {
            "student": {n: p.detach().clone() for n, p in zip(self.names, self.params)},
            "fast_ema": {n: t.clone() for n, t in zip(self.names, self.ema.fast)},
            "slow_ema": {n: t.clone() for n, t in zip(self.names, self.ema.slow)},
        }
        out = DistilledModel(
            self.model,
            self.config.lora,
            config=self.config.to_dict(),
            final_weights=self.config.final_weights,
            weights=weights,
            history=self.history,
        )
        out.use_weights(self.config.final_weights)
        self.model.eval()
        return out
