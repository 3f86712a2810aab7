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
from scfm.train.optimizers import make_optimizer
from scfm.train.step import STEP_CLASSES
from scfm.weights.ema import FastSlowEMA
from scfm.weights.lora import attach_lora, init_lora, lora_named_parameters
from scfm.weights.quantize import base_bytes, quantize_base


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


NON_FINITE_PARTS = {
    "data": "the data batch ({key} holds nan/inf)",
    "teacher": "the teacher's output (the teacher-branch targets, LoRA off)",
    "fast_ema": "the fast EMA's output (the self-distillation targets)",
    "slow_ema": "the slow EMA's output (the second half of every shortcut target)",
    "prediction": "the student's prediction",
    "loss": "the loss (the student's prediction and every target were finite)",
    "gradient": "the gradients (the loss was finite)",
    "other_rank": "another process's batch (its own message names the cause)",
}
"""What a non-finite step's message can blame, by the keys of ``Distiller._non_finite_parts``."""
_EMA_FIX = (
    "The EMA LoRA weights have diverged: resume from the last checkpoint with a lower lr (now {lr}) "
    "or grad_clip (now {grad_clip}), or set nan_policy=skip"
)
_STUDENT_FIX = (
    "Lower lr (now {lr}) or grad_clip (now {grad_clip}), avoid fp16 (mixed_precision=bf16), or set nan_policy=skip"
)
NON_FINITE_FIXES = {
    "data": "Check the data: every x0 and cond tensor must be finite",
    "teacher": (
        "Lowering lr does not help here: check the teacher's weights and precision "
        "(fp16 overflows: try model_dtype / target_precision bf16 or no), or set nan_policy=skip"
    ),
    "fast_ema": _EMA_FIX,
    "slow_ema": _EMA_FIX,
    "prediction": _STUDENT_FIX,
    "loss": _STUDENT_FIX,
    "gradient": _STUDENT_FIX,
    "other_rank": "See the other process's message",
}
"""The advice each part of :data:`NON_FINITE_PARTS` gets."""


class Distiller:
    """Holds the one base model with LoRA, both EMAs, optimizer, schedule and generators.

    ``model`` must already be on its device, except with ``config.base_quantization``: then it may be on the CPU and
    each Linear layer is moved to ``device`` as it is quantized. LoRA is attached here. ``seq_len_fn(x0)``
    (optional) gives the token count for the resolution shift.
    """

    def __init__(self, model: nn.Module, config: DistillConfig, device: torch.device, seq_len_fn=None) -> None:
        self.config, self.device, self.seq_len_fn = config, device, seq_len_fn
        self.rank, self.world_size = world()
        self.logger: Any = None
        """The run's :class:`scfm.train.run_log.RunLogger` while the loop trains (main process with an output_dir;
        else None): callbacks such as validation log images through it."""
        if config.flush_denormal and device.type == "cpu":
            torch.set_flush_denormal(True)
        config.check_runnable(device)
        before = base_bytes(model)
        exclude = getattr(model, "quantization_exclude", ())
        self.quantized = quantize_base(model, config.base_quantization, exclude, device)
        """Names of the base's Linear layers stored quantized (``config.base_quantization``; [] for none)."""
        self.base_bytes = (before, base_bytes(model) if self.quantized else before)
        """Live bytes of the frozen base before and after quantization."""
        self.model = attach_lora(model, config.lora)
        init_lora(self.model, torch.Generator().manual_seed(config.seed), config.lora.init)
        named = lora_named_parameters(self.model)
        self.names = [_strip(n) for n, _ in named]
        self.params = [p for _, p in named]
        self.ema = FastSlowEMA(self.names, self.params, config.fast_decay, config.slow_decay, config.ema_init)
        if config.offload_ema:
            self.ema.to("cpu", pin_memory=device.type == "cuda")
        self.step_fn = STEP_CLASSES[config.objective](
            self.model,
            self.params,
            self.ema,
            config.plan,
            config.mixed_precision,
            config.target_precision,
            step_scale=config.step_scale,
            self_targets=config.self_targets,
        )
        self.opt = make_optimizer(config.optimizer, self.params, config.lr, config.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self._lr_factor)
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.mixed_precision == "fp16")
        self.plan_gen = torch.Generator().manual_seed(config.seed)
        self.noise_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
        self.step = 0
        self.skipped = 0
        self.history: list[dict[str, Any]] = []
        self.checkpoint: str | None = None
        """The newest checkpoint written or resumed from (the loop sets it); error messages name it."""

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

    def any_rank(self, flag: bool) -> bool:
        """True when ``flag`` is true on any process (one all-reduce; no communication with one process)."""
        if self.world_size == 1:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value)
        return bool(value.item() > 0)

    def train_step(self, batches: list[dict]) -> dict[str, float] | None:
        """One optimizer step over ``len(batches)`` accumulated global batches.

        Returns the logged record, or None when the step was skipped for a non-finite loss
        (``nan_policy='skip'``). Raises ``FloatingPointError`` for ``nan_policy='stop'``.
        """
        self.opt.zero_grad(set_to_none=True)
        self.step_fn.reset_watch()
        totals = None
        for batch in batches:
            with self.step_fn.backward_scope():
                loss, stats = self.micro_loss(batch)
                self.scaler.scale(loss / len(batches)).backward()
            stacked = torch.stack([v.float() for v in stats.values()]) / len(batches)
            totals = stacked if totals is None else totals + stacked
        sums = dict(zip(stats.keys(), totals.tolist()))  # one device sync per step for all stats
        if self.any_rank(not math.isfinite(sums["loss"])):
            return self._non_finite("loss", sums["loss"], self._non_finite_parts(batches, sums["loss"]))
        self._all_reduce_grads()
        self.scaler.unscale_(self.opt)
        clip = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip))
        if self.any_rank(not math.isfinite(grad_norm)) and self.config.mixed_precision != "fp16":
            return self._non_finite("gradient norm", grad_norm, ["gradient"])
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        self.ema.update(self.params)
        self.step += 1
        if self.config.ema_restart_every and self.step % self.config.ema_restart_every == 0:
            self.ema.reset_to(self.params)
        record = {"step": self.step, **sums, "grad_norm": grad_norm, "lr": self.sched.get_last_lr()[0]}
        return record

    def _non_finite_parts(self, batches: list[dict], loss: float) -> list[str]:
        """Keys of :data:`NON_FINITE_PARTS` that went non-finite in this step, in causal order (one
        device sync; called only when the loss is not finite)."""
        parts = []
        for batch in batches:
            for key, value in batch.items():
                if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
                    parts.append(f"data:{key}")
        parts = list(dict.fromkeys(parts))
        watch = self.step_fn.watch
        parts += [name for name in ("teacher", "fast_ema", "slow_ema", "prediction") if name in watch and watch[name]]
        if not parts:
            parts.append("loss" if not math.isfinite(loss) else "other_rank")
        return parts

    def _non_finite(self, what: str, value: float, parts: list[str]) -> None:
        """Drop this step's gradients; raise ``FloatingPointError`` (nan_policy 'stop', or too many
        skipped steps) with a message naming what went non-finite first, or count the skip."""
        self.opt.zero_grad(set_to_none=True)
        first = parts[0]
        cause = NON_FINITE_PARTS[first.split(":")[0]].format(key=first.partition(":")[2])
        later = [NON_FINITE_PARTS[p.split(":")[0]].format(key=p.partition(":")[2]) for p in parts[1:]]
        cause += f" (and downstream: {'; '.join(later)})" if later else ""
        fix = NON_FINITE_FIXES[first.split(":")[0]].format(lr=self.config.lr, grad_clip=self.config.grad_clip)
        kept = (
            f"the last checkpoint is intact: {self.checkpoint}"
            if self.checkpoint
            else "no checkpoint was written yet"
            + ("" if self.config.output_dir else " (output_dir is None: this run writes none)")
        )
        if self.config.nan_policy == "stop":
            raise FloatingPointError(
                f"{what} is {value} at step {self.step + 1}: non-finite first in {cause}. Stopping; {kept}. {fix}"
            )
        self.skipped += 1
        if self.skipped > self.config.max_skipped_steps:
            raise FloatingPointError(
                f"{self.skipped} steps skipped for non-finite {what} "
                f"(max_skipped_steps={self.config.max_skipped_steps}; the last at step {self.step + 1}, "
                f"non-finite first in {cause}). Stopping; {kept}. {fix}"
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
        """Restore everything :meth:`state_groups` saved; ``ValueError`` when the LoRA tensors do not fit
        this model (names or shapes)."""
        lora = groups["lora"]
        if set(lora) != set(self.names):
            only_ckpt, only_model = sorted(set(lora) - set(self.names)), sorted(set(self.names) - set(lora))
            raise ValueError(
                "the checkpoint's LoRA tensors do not match this model: "
                f"{len(only_ckpt)} only in the checkpoint (e.g. {only_ckpt[:2]}), "
                f"{len(only_model)} only in the model (e.g. {only_model[:2]}); "
                "was it made for another teacher or other lora.targets?"
            )
        for name, param in zip(self.names, self.params):
            if lora[name].shape != param.shape:
                raise ValueError(
                    f"the checkpoint's LoRA tensor {name} has shape {tuple(lora[name].shape)}, this model's "
                    f"{tuple(param.shape)}: was it made for another teacher or another lora.rank?"
                )
        torch._foreach_copy_(self.params, [lora[n].to(self.device) for n in self.names])
        self.ema.load_state_dict(groups["ema"])  # copied onto the EMAs' device (the CPU with offload_ema)
        optimizer_from_tensors(
            self.opt,
            {k: v if k.endswith(".step") else v.to(self.device) for k, v in groups["optimizer"].items()},
            meta["optimizer"],
        )
        self.sched.load_state_dict(meta["scheduler"])
        if meta["scaler"] or not self.scaler.is_enabled():  # a checkpoint without fp16 has no loss scale yet
            self.scaler.load_state_dict(meta["scaler"])
        self.step = int(meta["step"])
        self.skipped = int(meta.get("skipped", 0))
        self.history = list(meta.get("history", []))
        self.plan_gen.set_state(groups["rng"]["plan"])
        try:
            self.noise_gen.set_state(groups["rng"]["noise"])
        except RuntimeError:  # a generator state of another device type (the run moved between cpu and cuda)
            self.noise_gen.manual_seed(self.config.seed + 1 + self.step)
            print(
                f"note: the checkpoint's noise generator cannot move to {self.device.type}; restarted it from "
                f"seed {self.config.seed} + 1 + step {self.step} (the noise differs from an unmoved run's from here)"
            )
        self.follow_config()

    def follow_config(self) -> None:
        """Point the optimizer and the schedule at this config's ``lr``, ``weight_decay`` and schedule at
        the current step (after a resume whose config changed them; a no-op when nothing changed)."""
        factor = self._lr_factor(self.sched.last_epoch)
        for group in self.opt.param_groups:
            group["initial_lr"] = self.config.lr
            group["lr"] = self.config.lr * factor
            group["weight_decay"] = self.config.weight_decay
        self.sched.base_lrs = [self.config.lr] * len(self.opt.param_groups)

    def restart_generators(self) -> None:
        """Seed the plan and noise generators from ``config.seed`` (a resume that changed the seed)."""
        self.plan_gen.manual_seed(self.config.seed)
        self.noise_gen.manual_seed(self.config.seed + 1)

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
