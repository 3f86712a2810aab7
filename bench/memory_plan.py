"""Memory plan for distilling a real model with scfm on one GPU, from its transformer ``config.json`` alone.

For FLUX.1-dev, SD3.5-large and Wan2.1-T2V-1.3B (their ``transformer/config.json`` is shipped in
``bench/memory_configs/``; nothing is downloaded) the plan gives, per setting, the bytes of:

- **base**: the frozen transformer, per quantization of its Linear weights (none = bf16, int8, fp8, nf4);
- **LoRA state**: the fp32 LoRA, its fast and slow EMA, the weight switch's stash (one more copy, kept to
  restore the student after an EMA pass) and AdamW's two moments: 6 fp32 copies of the LoRA;
- **step**: what one training step adds on top at its peak: the saved activations of the student pass, the LoRA
  gradients, the batch and the working tensors of the moment (the peak of the no-grad target passes and of the
  optimizer step are taken too, whichever is higher);
- **total** = base + LoRA state + step, and whether it fits a 24, 48 or 80 GB card.

How the numbers are made:

- *Counted*: the diffusers class is instantiated on the ``meta`` device from the config (no memory, exact
  shapes), cast as ``from_pretrained(torch_dtype=model_dtype)`` would (``_keep_in_fp32_modules`` stay fp32), and
  scfm's own :func:`~scfm.weights.lora.attach_lora` attaches the preset's LoRA (``configs/*.yaml``: targets,
  alpha, precision, CFG mode), so parameter, LoRA and Linear-weight counts are exact.
- *Simulated*: the step runs on fake tensors (``torch._subclasses.FakeTensorMode``: shapes, dtypes, no data, no
  compute) through the same code as a real step: the diffusers forward and backward (with diffusers' gradient
  checkpointing), scfm's adapter (runtime CFG doubles the batch of SD3 and Wan), LoRA, EMAs and weight switch,
  torch's AdamW and gradient clipping. A dispatch mode (:class:`LiveBytes`) adds the bytes of every storage an
  operation creates and subtracts them when the storage dies: the peak of live tensor bytes, the quantity
  ``torch.cuda.max_memory_allocated`` reports. The step is a mirror of
  :meth:`scfm.train.engine.Distiller.train_step` with the target rows split at the expected teacher fraction (the
  real step's data-dependent row selection cannot run on fake tensors). tests/test_memory_plan.py checks this
  simulation on a tiny Flux transformer against the peak of live tensor bytes a real scfm training step reaches
  on the CPU (from the profiler's allocation events).
- *Emulated GPU (not measurable here)*: the fake tensors live on the CPU, so what differs on a CUDA GPU is
  emulated: CUDA's autocast runs LayerNorm / RMSNorm / softmax in fp32 where CPU autocast keeps bf16
  (:func:`cuda_autocast_rules`), AdamW takes its multi-tensor path (one LoRA-sized temporary), and attention is a
  stand-in with the memory of CUDA's fused (flash) kernel: output and fp32 log-sum-exp saved, an fp32 ``dq``
  accumulator in the backward (:func:`fused_attention`; the test runs it too, against the CPU's fused kernel).
- *Formulas*: quantized bases are not simulated (fake tensors cannot carry torchao / bitsandbytes weights). Their
  bytes come from :func:`base_bytes` over exactly the layers scfm's ``base_quantization`` quantizes
  (:func:`scfm.weights.quantize.quantizable_linears` with the family's ``quantization_exclude``; the int8 count
  equals the live bytes of a real quantized tiny Flux, tests/test_memory_plan.py), and their step adds one
  dequantized bf16 copy of the largest Linear weight (the working buffer of a dequantize-then-matmul layer);
  activations are those of the bf16 base. ``optimizer: adamw8bit`` and ``offload_ema: true`` (the "savers"
  columns) replace AdamW's two fp32 moments by bitsandbytes' 8-bit state (:func:`adamw8bit_state_bytes`, equal to
  a real optimizer's, tested) and move both EMAs off the GPU.

Not included: the CUDA context and library workspaces, allocator fragmentation (both covered by the 10%
headroom of the "fits" columns), the text encoders and VAE (scfm distills from a teacher cache, so they never
enter the training process).

    python bench/memory_plan.py --model flux-dev              # table
    python bench/memory_plan.py --model all --markdown        # Markdown tables
    python bench/memory_plan.py --model all --compact         # a total per quantization on one line
    python bench/memory_plan.py --model wan-1.3b --ranks 64 --json
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import weakref
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from scfm.models.adapters import VelocityAdapter, get_adapter
from scfm.objective.flow import broadcast_time, interpolate
from scfm.objective.loss import per_row_mse
from scfm.objective.targets import index_cond
from scfm.train.config import DistillConfig
from scfm.train.step import autocast_context
from scfm.train.yaml_config import load_config
from scfm.weights.ema import FastSlowEMA
from scfm.weights.lora import attach_lora, lora_named_parameters
from scfm.weights.quantize import is_quantizable
from scfm.weights.switch import WeightSwitch

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = Path(__file__).resolve().parent / "memory_configs"
GIB = 2**30
CARDS_GB = (24, 48, 80)
"""Card sizes the table marks (GPU memory in GiB, as nvidia-smi counts the 24 / 48 / 80 GB cards)."""
HEADROOM = 0.10
"""Fraction of a card left for the CUDA context, library workspaces and allocator fragmentation."""
QUANTIZATIONS = ("none", "int8", "fp8", "nf4")
NF4_BLOCK = 64
"""bitsandbytes' 4-bit block size: one fp32 absmax per 64 weights (no double quantization: diffusers' default)."""
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class ModelSpec:
    """A diffusers transformer as scfm distills it: architecture, preset, and the shapes of one training batch."""

    name: str
    family: str
    """scfm adapter name: 'flux', 'sd3' or 'wan'."""
    config: dict[str, Any]
    """The transformer's config.json fields (keys starting with '_' removed)."""
    preset: Path
    """The scfm preset (configs/*.yaml) whose LoRA targets, precision and CFG mode the plan uses."""
    text_tokens: int
    """Text tokens per prompt in the teacher cache (Flux: 512 T5; SD3: 77 CLIP + 256 T5; Wan: 512 UMT5)."""
    latent_channels: int = 16
    vae_scale: int = 8
    """Pixels per latent pixel (each side)."""
    vae_temporal: int = 4
    """Video frames per latent frame after the first (Wan: 4k + 1 frames -> k + 1 latent frames)."""
    text_dtype: torch.dtype = torch.bfloat16
    """dtype of the cached text embeddings (the teacher cache stores them in the pipeline's dtype; x0 is fp32)."""
    sizes: tuple[tuple[int, int, int], ...] = ((512, 512, 1), (1024, 1024, 1))
    """(width, height, frames) the table shows; frames 1 for images."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """DistillConfig fields (dotted) set over the preset."""

    @property
    def text_dim(self) -> int:
        return int(self.config.get("joint_attention_dim") or self.config["text_dim"])

    def distill_config(self, rank: int) -> DistillConfig:
        """The preset with LoRA rank and alpha = ``rank`` (the presets use alpha = rank)."""
        values = {**self.overrides, "lora.rank": rank, "lora.alpha": float(rank)}
        return load_config(self.preset, [f"{k}={json.dumps(v)}" for k, v in values.items()])


def load_model_config(path: str | Path) -> dict[str, Any]:
    """A transformer config.json without its '_' keys (class name, diffusers version, source)."""
    return {k: v for k, v in json.loads(Path(path).read_text()).items() if not k.startswith("_")}


MODELS: dict[str, ModelSpec] = {
    "flux-dev": ModelSpec(
        "flux-dev", "flux", load_model_config(CONFIG_DIR / "flux-dev.json"), ROOT / "configs/flux-dev.yaml", 512
    ),
    "sd35-large": ModelSpec(
        "sd35-large", "sd3", load_model_config(CONFIG_DIR / "sd35-large.json"), ROOT / "configs/sd35-large.yaml", 333
    ),
    "wan-1.3b": ModelSpec(
        "wan-1.3b",
        "wan",
        load_model_config(CONFIG_DIR / "wan-1.3b.json"),
        ROOT / "configs/wan-t2v-1.3b.yaml",
        512,
        sizes=((832, 480, 5), (832, 480, 81)),
    ),
}
"""The models ``--model`` accepts."""


@dataclass(frozen=True)
class Setting:
    """One row's training shape: LoRA rank, batch, frame size and count, gradient checkpointing."""

    rank: int
    width: int
    height: int
    frames: int = 1
    batch: int = 1
    checkpointing: bool = True

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}" + (f"x{self.frames}" if self.frames > 1 else "")


# ---------------------------------------------------------------------------- counting


def build_meta_adapter(spec: ModelSpec, config: DistillConfig) -> VelocityAdapter:
    """The adapter around the transformer on the ``meta`` device, in ``config.model_dtype`` as ``from_pretrained``
    loads it (state-dict tensors of ``_keep_in_fp32_modules`` stay fp32), without LoRA."""
    import diffusers

    adapter_cls = get_adapter(spec.family)
    transformer_cls = getattr(diffusers, adapter_cls.transformer_class_name)
    with torch.device("meta"):
        transformer = transformer_cls(**spec.config)
    dtype = DTYPES[config.model_dtype]
    keep = tuple(getattr(transformer_cls, "_keep_in_fp32_modules", None) or ())
    loaded = lambda name: torch.float32 if any(m in name.split(".") for m in keep) else dtype  # noqa: E731
    for name, param in transformer.named_parameters():
        param.data = param.data.to(loaded(name))
    state = set(transformer.state_dict())
    for name, buffer in list(transformer.named_buffers()):
        if name in state and buffer.is_floating_point():  # persistent buffers are loaded too
            owner, _, leaf = name.rpartition(".")
            transformer.get_submodule(owner)._buffers[leaf] = buffer.to(loaded(name))
    transformer.requires_grad_(False)
    return adapter_cls(transformer, **adapter_cls.guidance_kwargs(config.cfg_scale, config.cfg_mode)).eval()


@dataclass(frozen=True)
class ParameterCounts:
    """Counts of one model with its LoRA (exact: from the model definition)."""

    base_params: int
    """Parameters of the frozen transformer."""
    base_bytes: int
    """Bytes of its parameters and buffers as loaded (model_dtype; fp32-kept modules in fp32)."""
    quantizable: int
    """Weights of the Linear layers loaded in model_dtype (what a quantized base quantizes)."""
    quantizable_bytes: int
    """Their bytes as loaded."""
    quantizable_rows: int
    """Their output channels (one scale each for int8 / fp8)."""
    quantizable_blocks: int
    """Their 64-weight blocks (one absmax each for nf4)."""
    largest_linear: int
    """Weights of the largest quantizable Linear layer (its dequantized copy is the working buffer)."""
    lora_params: int
    """LoRA A and B parameters (fp32)."""
    lora_8bit_state: int
    """Bytes of bitsandbytes' 8-bit AdamW state for them (:func:`adamw8bit_state_bytes`)."""
    lora_layers: int


def count_parameters(adapter: nn.Module, model_dtype: torch.dtype) -> ParameterCounts:
    """:class:`ParameterCounts` of a (meta) adapter with LoRA attached."""
    base = [(n, p) for n, p in adapter.named_parameters() if "lora_" not in n]
    buffers = list(adapter.buffers())
    exclude = getattr(adapter, "quantization_exclude", ())  # the layers base_quantization quantizes (LoRA on or not)
    linears = [
        m.weight
        for n, m in adapter.named_modules()
        if "lora_" not in n
        and is_quantizable(n.removesuffix(".base_layer"), m, exclude)
        and m.weight.dtype == model_dtype
    ]
    lora = [p for _, p in lora_named_parameters(adapter)]
    return ParameterCounts(
        base_params=sum(p.numel() for _, p in base),
        base_bytes=sum(p.numel() * p.element_size() for _, p in base)
        + sum(b.numel() * b.element_size() for b in buffers),
        quantizable=sum(w.numel() for w in linears),
        quantizable_bytes=sum(w.numel() * w.element_size() for w in linears),
        quantizable_rows=sum(w.shape[0] for w in linears),
        quantizable_blocks=sum(math.ceil(w.numel() / NF4_BLOCK) for w in linears),
        largest_linear=max((w.numel() for w in linears), default=0),
        lora_params=sum(p.numel() for p in lora),
        lora_8bit_state=adamw8bit_state_bytes([p.numel() for p in lora]),
        lora_layers=sum(1 for n, _ in lora_named_parameters(adapter) if ".lora_A." in n),
    )


def base_bytes(counts: ParameterCounts, quantization: str) -> int:
    """Bytes of the frozen base with its Linear weights quantized; everything else (biases, norms, embeddings,
    convolutions, modules kept in fp32, buffers) stays as loaded.

    - none: as loaded (bf16: 2 B per weight);
    - int8: 1 B per weight + per output channel one fp32 scale and one int8 zero point (torchao's
      ``Int8WeightOnlyConfig``);
    - fp8 (e4m3): 1 B per weight + one fp32 scale per output channel (torchao's row-wise scaling);
    - nf4: 0.5 B per weight + one fp32 absmax per block of 64 weights (bitsandbytes without double quantization:
      0.5625 B per weight; with it, about 0.516).
    """
    rest = counts.base_bytes - counts.quantizable_bytes
    n = counts.quantizable
    if quantization == "none":
        return counts.base_bytes
    if quantization == "int8":
        return rest + n + 5 * counts.quantizable_rows
    if quantization == "fp8":
        return rest + n + 4 * counts.quantizable_rows
    if quantization == "nf4":
        return rest + n // 2 + 4 * counts.quantizable_blocks
    raise ValueError(f"quantization={quantization!r} must be one of {QUANTIZATIONS}")


ADAMW8BIT_BLOCK = 256
"""bitsandbytes' 8-bit optimizer block: one fp32 absmax per 256 values of each moment."""
ADAMW8BIT_MIN_SIZE = 4096
"""bitsandbytes keeps fp32 moments for tensors with fewer elements (``min_8bit_size``)."""


def adamw8bit_state_bytes(sizes: Sequence[int]) -> int:
    """Bytes of bitsandbytes' AdamW8bit state for parameters of ``sizes`` elements: two uint8 moments with an fp32
    absmax per block of 256 and a 256-entry fp32 code book each, or two fp32 moments for a tensor under 4096."""
    total = 0
    for n in sizes:
        if n < ADAMW8BIT_MIN_SIZE:
            total += 8 * n
        else:
            total += 2 * (n + 4 * math.ceil(n / ADAMW8BIT_BLOCK) + 4 * 256)
    return total


def savers_lora_state(memory: StepMemory, counts: ParameterCounts) -> int:
    """The LoRA state with ``optimizer: adamw8bit`` and ``offload_ema: true``: the simulated state less AdamW's two
    fp32 moments and both fp32 EMAs, plus the 8-bit optimizer state."""
    return memory.lora_state - 8 * counts.lora_params - 8 * counts.lora_params + counts.lora_8bit_state


def dequantize_buffer(counts: ParameterCounts, quantization: str) -> int:
    """Bytes of the working copy a quantized Linear layer dequantizes into (bf16, the largest layer); 0 for none."""
    return 0 if quantization == "none" else 2 * counts.largest_linear


# ---------------------------------------------------------------------------- live bytes


class LiveBytes(TorchDispatchMode):
    """Bytes of live tensor storages created while the mode is active, and their peak.

    Every output of every operation is looked at: a storage not seen before adds its ``nbytes``, and a weak
    reference subtracts them when the storage dies (views and in-place results share a storage and add nothing).
    Works on real and on fake tensors. ``peak`` is the maximum of ``live`` since the last :meth:`reset_peak`.
    """

    def __init__(self) -> None:
        super().__init__()
        self._seen: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.live = 0
        self.peak = 0

    def track(self, tensor: torch.Tensor) -> None:
        """Count ``tensor``'s storage if it is new."""
        storage = tensor.untyped_storage()
        if storage in self._seen:
            return
        nbytes = storage.nbytes()
        self._seen[storage] = nbytes
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, nbytes)

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def reset_peak(self) -> None:
        self.peak = self.live

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self.track(value)
        return out


class _FusedAttention(torch.autograd.Function):
    """Attention with the memory of a fused (flash) kernel: saves q, k, v, the output and an fp32 log-sum-exp
    [B, H, N]; the backward allocates dq, dk, dv and an fp32 dq accumulator. Produces no values (for fake tensors)."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v, _, _ = ctx.saved_tensors
        accumulator = torch.empty_like(q, dtype=torch.float32)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        del accumulator
        return dq, dk, dv


def fused_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """Stand-in for ``F.scaled_dot_product_attention`` with the memory of fused attention (see
    :class:`_FusedAttention`); casts fp32 inputs to the autocast dtype first, as autocast does for attention.
    Masks and dropout are refused (the fused kernel's memory would differ; these models use neither)."""
    if attn_mask is not None or dropout_p:
        raise ValueError("the fused-attention stand-in takes no attention mask and no dropout")
    device = query.device.type
    if torch.is_autocast_enabled(device):
        low = torch.get_autocast_dtype(device)
        query, key, value = (x.to(low) if x.dtype == torch.float32 else x for x in (query, key, value))
    return _FusedAttention.apply(query, key, value)


@contextmanager
def _fused_attention_stand_in() -> Iterator[None]:
    """Replace ``torch.nn.functional.scaled_dot_product_attention`` by :func:`fused_attention` inside the block."""
    functional = torch.nn.functional
    saved = functional.scaled_dot_product_attention
    functional.scaled_dot_product_attention = fused_attention
    try:
        yield
    finally:
        functional.scaled_dot_product_attention = saved


CUDA_FP32_FUNCTIONS = ("layer_norm", "group_norm", "rms_norm", "softmax", "log_softmax")
"""``torch.nn.functional`` functions CUDA autocast runs in fp32 (in torch's ``AT_FORALL_FP32`` /
``AT_FORALL_FP32_SET_OPT_DTYPE`` of ATen/autocast_mode.h) while CPU autocast runs them in the input's dtype, and
that these transformers call on bf16 tensors. The other ops of those lists they use (``pow`` and ``rsqrt`` in
RMSNorm, ``exp`` in the timestep embedding, the loss) already get fp32 inputs."""


def _upcast_under_autocast(function):
    """``function`` with its bf16 / fp16 tensor arguments cast to fp32 while CPU autocast is on."""

    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        if torch.is_autocast_enabled("cpu"):
            low = torch.get_autocast_dtype("cpu")
            up = lambda x: x.float() if isinstance(x, torch.Tensor) and x.dtype == low else x  # noqa: E731
            args, kwargs = tuple(up(a) for a in args), {k: up(v) for k, v in kwargs.items()}
        return function(*args, **kwargs)

    return wrapped


@contextmanager
def cuda_autocast_rules() -> Iterator[None]:
    """Inside the block, CPU autocast follows CUDA autocast where the two differ for these models: the functions of
    :data:`CUDA_FP32_FUNCTIONS` return fp32 (a bf16 LayerNorm gives fp32, and every Linear after it casts its own
    bf16 copy). The casts happen above autograd, as autocast's own, so the tensors saved for backward are those a
    CUDA step saves. The lower-precision list (Linear, matmul, convolution, attention) is the same on both."""
    functional = torch.nn.functional
    saved = {name: getattr(functional, name) for name in CUDA_FP32_FUNCTIONS}
    try:
        for name, function in saved.items():
            setattr(functional, name, _upcast_under_autocast(function))
        yield
    finally:
        for name, function in saved.items():
            setattr(functional, name, function)


# ---------------------------------------------------------------------------- the step


def make_batch(
    spec: ModelSpec, setting: Setting, device: torch.device | str, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """A random training batch as the teacher cache yields it for ``spec`` at ``setting`` (x0 fp32; text in
    ``spec.text_dtype``; Flux: per-sample guidance; true-CFG families: one negative row)."""
    b, c = setting.batch, spec.latent_channels
    h, w = setting.height // spec.vae_scale, setting.width // spec.vae_scale
    latent = (b, c, h, w)
    if get_adapter(spec.family).latent_ndim == 5:
        latent = (b, c, (setting.frames - 1) // spec.vae_temporal + 1, h, w)

    def randn(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, device=device, dtype=dtype)

    batch = {"x0": randn(*latent), "prompt_embeds": randn(b, spec.text_tokens, spec.text_dim, dtype=spec.text_dtype)}
    pooled = spec.config.get("pooled_projection_dim")
    if pooled:
        batch["pooled_prompt_embeds"] = randn(b, pooled, dtype=spec.text_dtype)
    if spec.family == "flux" and spec.config.get("guidance_embeds"):
        batch["guidance"] = 7.5 * torch.rand(b, generator=generator, device=device)
    if get_adapter(spec.family).true_cfg:
        batch["negative_prompt_embeds"] = randn(1, spec.text_tokens, spec.text_dim, dtype=spec.text_dtype)
        if pooled:
            batch["negative_pooled_prompt_embeds"] = randn(1, pooled, dtype=spec.text_dtype)
    return batch


def _student_pass(model: nn.Module) -> AbstractContextManager:
    hook = getattr(model, "student_pass", None)
    return hook() if callable(hook) else nullcontext()


def simulated_train_step(
    model: nn.Module,
    params: Sequence[nn.Parameter],
    ema: FastSlowEMA,
    switch: WeightSwitch,
    opt: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    config: DistillConfig,
) -> None:
    """One SCFM optimizer step as :meth:`~scfm.train.engine.Distiller.train_step` and
    :meth:`~scfm.train.step.ShortcutStep.loss` run it, with the same allocations up to a few latent-sized tensors:
    the plan's rows split at the expected teacher fraction (``round(teacher_ratio * B)`` teacher rows, the rest
    self rows; ``fm_ratio`` rows take no target pass), the targets in inference mode (teacher with the LoRA off,
    fast EMA, then slow EMA on every shortcut row), the student pass with gradient, backward, gradient clipping,
    AdamW and the EMA update. Runs on fake tensors (no data-dependent step)."""
    plan, device = config.plan, batch["x0"].device
    target_precision = config.mixed_precision if config.target_precision == "same" else config.target_precision
    opt.zero_grad(set_to_none=True)
    x0 = batch["x0"]
    cond = {k: v for k, v in batch.items() if k != "x0"}
    size = x0.shape[0]
    n_fm = round(plan.fm_ratio * size)
    n_teacher = round(plan.teacher_ratio * (size - n_fm))
    rows = torch.arange(size, device=device)
    teacher_rows, self_rows, shortcut_rows = rows[:n_teacher], rows[n_teacher : size - n_fm], rows[: size - n_fm]
    t = torch.rand(size, device=device, dtype=x0.dtype)
    dt = torch.rand(size, plan.t_skip, device=device, dtype=x0.dtype)
    eps = torch.randn_like(x0)
    x_t = interpolate(x0, eps, t)

    def velocity(source: str, x: torch.Tensor, tt: torch.Tensor, c: dict[str, Any]) -> torch.Tensor:
        if source == "teacher":
            weights = switch.teacher()
        else:
            weights = switch.use(ema.fast if source == "fast" else ema.slow)
        guidance = nullcontext() if source == "teacher" else _student_pass(model)  # EMAs run as the student
        with weights, guidance, autocast_context(device, target_precision):
            return model(x, tt, **c).float()

    with torch.inference_mode():
        x, tt = x_t.clone(), t.clone()
        acc = torch.zeros_like(x_t)
        for m in range(plan.t_skip):
            v = torch.zeros_like(x_t)
            sources = [("teacher", teacher_rows), ("fast", self_rows)] if m < plan.t_skip // 2 else []
            for source, index in sources or [("slow", shortcut_rows)]:
                if index.numel():
                    out = velocity(
                        source, x.index_select(0, index), tt.index_select(0, index), index_cond(cond, index, size)
                    )
                    v.index_copy_(0, index, out.to(v.dtype))
            d = broadcast_time(dt[:, m], x)
            acc = acc + d * v
            x = x - d * v
            tt = tt - dt[:, m]
        jump = broadcast_time(dt.sum(1), x)
        target = acc / jump
        del x, acc, v
    with _student_pass(model), autocast_context(device, config.mixed_precision):
        pred = model(x_t, t, **cond).float()
    loss = per_row_mse(pred, target).mean()
    del pred
    loss.backward()
    del loss
    torch.nn.utils.clip_grad_norm_(params, config.grad_clip if config.grad_clip > 0 else math.inf)
    opt.step()
    ema.update(params)


@dataclass(frozen=True)
class StepMemory:
    """Live tensor bytes of one simulated training step (bf16 base; see the module docstring)."""

    persistent: int
    """Live before the step: base weights, LoRA, both EMAs, the switch stash, AdamW moments."""
    base: int
    """The base weights' part of it."""
    lora_state: int
    """The rest of it: 6 fp32 copies of the LoRA (+ AdamW's step counters)."""
    peak: int
    """Highest live total during the step."""

    @property
    def step(self) -> int:
        """What the step adds at its peak: activations, LoRA gradients, batch and working tensors."""
        return self.peak - self.persistent


def simulate_step(spec: ModelSpec, setting: Setting, cuda: bool = True) -> tuple[StepMemory, ParameterCounts]:
    """Simulate one steady-state training step of ``spec`` at ``setting`` on fake CPU tensors and count its live
    tensor bytes (:class:`LiveBytes`); the AdamW moments exist before the step, as from the second step on.

    ``cuda``: what a CUDA GPU runs, emulated (no GPU needed): CUDA's autocast rules (:func:`cuda_autocast_rules`) and
    AdamW's multi-tensor (foreach) update, torch's default on CUDA. With ``cuda=False`` the step is what the CPU runs
    (what the test compares with a real CPU step). Both use the fused-attention stand-in (:func:`fused_attention`).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    config = spec.distill_config(setting.rank)
    adapter = build_meta_adapter(spec, config)
    if setting.checkpointing:
        adapter.enable_gradient_checkpointing()
    attach_lora(adapter, config.lora)
    counts = count_parameters(adapter, DTYPES[config.model_dtype])
    tracker = LiveBytes()
    rules = cuda_autocast_rules() if cuda else nullcontext()
    with FakeTensorMode(allow_non_fake_inputs=True), tracker, _fused_attention_stand_in(), rules:
        adapter.to_empty(device="cpu")
        named = lora_named_parameters(adapter)
        params = [p for _, p in named]
        ema = FastSlowEMA([n for n, _ in named], params, config.fast_decay, config.slow_decay, config.ema_init)
        switch = WeightSwitch(adapter, params)
        opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, foreach=cuda)
        for p in params:  # the moments exist from the first step on
            p.grad = torch.zeros_like(p)
        opt.step()
        opt.zero_grad(set_to_none=True)
        persistent = tracker.live
        tracker.reset_peak()
        batch = make_batch(spec, setting, "cpu")
        simulated_train_step(adapter, params, ema, switch, opt, batch, config)
        peak = tracker.peak
    memory = StepMemory(
        persistent=persistent, base=counts.base_bytes, lora_state=persistent - counts.base_bytes, peak=peak
    )
    return memory, counts


# ---------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class PlanRow:
    """One row of the plan (GiB)."""

    model: str
    quantization: str
    rank: int
    size: str
    batch: int
    checkpointing: bool
    base_gib: float
    lora_state_gib: float
    step_gib: float
    total_gib: float
    fits: dict[int, bool]
    savers_lora_state_gib: float
    """LoRA state with 8-bit AdamW and the EMAs on the CPU (``optimizer: adamw8bit``, ``offload_ema: true``)."""
    savers_total_gib: float
    savers_fits: dict[int, bool]


def plan_rows(spec: ModelSpec, setting: Setting) -> list[PlanRow]:
    """The rows of ``setting`` for every quantization on a CUDA GPU (one simulation; quantization changes the base
    bytes and adds the dequantization buffer to the step)."""
    memory, counts = simulate_step(spec, setting)
    rows = []
    for quantization in QUANTIZATIONS:
        base = base_bytes(counts, quantization)
        step = memory.step + dequantize_buffer(counts, quantization)
        total = base + memory.lora_state + step
        savers = base + savers_lora_state(memory, counts) + step
        rows.append(
            PlanRow(
                model=spec.name,
                quantization=quantization,
                rank=setting.rank,
                size=setting.size,
                batch=setting.batch,
                checkpointing=setting.checkpointing,
                base_gib=base / GIB,
                lora_state_gib=memory.lora_state / GIB,
                step_gib=step / GIB,
                total_gib=total / GIB,
                fits={card: total <= (1 - HEADROOM) * card * GIB for card in CARDS_GB},
                savers_lora_state_gib=savers_lora_state(memory, counts) / GIB,
                savers_total_gib=savers / GIB,
                savers_fits={card: savers <= (1 - HEADROOM) * card * GIB for card in CARDS_GB},
            )
        )
    return rows


HEADER = ("quant", "rank", "size", "batch", "ckpt", "base", "LoRA+EMAs+AdamW", "activations+grads", "total")


def _cells(row: PlanRow) -> list[str]:
    return [
        _quant_name(row.quantization),
        str(row.rank),
        row.size,
        str(row.batch),
        "on" if row.checkpointing else "off",
        f"{row.base_gib:.1f}",
        f"{row.lora_state_gib:.1f}",
        f"{row.step_gib:.1f}",
        f"{row.total_gib:.1f}",
        *("yes" if row.fits[card] else "-" for card in CARDS_GB),
        f"{row.savers_total_gib:.1f} ({_smallest_card(row.savers_fits)})",
    ]


def _smallest_card(fits: dict[int, bool]) -> str:
    return next((f"{c} GB" for c in CARDS_GB if fits[c]), f">{CARDS_GB[-1]}")


def _quant_name(quantization: str) -> str:
    return "bf16" if quantization == "none" else quantization


def _render(header: Sequence[str], body: Sequence[Sequence[str]], markdown: bool, numeric_from: int) -> str:
    """An aligned text table, or a Markdown table whose columns from ``numeric_from`` on are right-aligned."""
    if markdown:
        rule = "|" + "|".join("---:" if i >= numeric_from else "---" for i in range(len(header))) + "|"
        return "\n".join(["| " + " | ".join(header) + " |", rule] + ["| " + " | ".join(cells) + " |" for cells in body])
    widths = [max(len(h), *(len(cells[i]) for cells in body)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([fmt(header)] + [fmt(cells) for cells in body])


def format_table(rows: Sequence[PlanRow], markdown: bool = False) -> str:
    """One line per row (GiB; the card columns say whether the total fits with 10% headroom)."""
    header = [*HEADER, *(f"fits {c} GB" for c in CARDS_GB), "total with savers"]
    return _render(header, [_cells(r) for r in rows], markdown, numeric_from=5)


SAVERS_COLUMNS = ("int8", "nf4")
"""Quantizations the compact table also shows with ``optimizer: adamw8bit`` and ``offload_ema: true``."""


def format_compact(rows: Sequence[PlanRow], markdown: bool = False) -> str:
    """One line per rank x size x batch x checkpointing: the LoRA state and the total per quantization (GiB),
    each with the smallest card it fits (10% headroom), '>80' when none."""
    header = ["rank", "size", "batch", "ckpt", "LoRA+EMAs+AdamW", *("total " + _quant_name(q) for q in QUANTIZATIONS)]
    header += [f"{_quant_name(q)} + savers" for q in SAVERS_COLUMNS]
    groups: dict[tuple, dict[str, PlanRow]] = {}
    for row in rows:
        groups.setdefault((row.rank, row.size, row.batch, row.checkpointing), {})[row.quantization] = row
    body = []
    for (rank, size, batch, ckpt), by_quant in groups.items():
        cells = [str(rank), size, str(batch), "on" if ckpt else "off", f"{by_quant['none'].lora_state_gib:.1f}"]
        for quantization in QUANTIZATIONS:
            row = by_quant[quantization]
            cells.append(f"{row.total_gib:.1f} ({_smallest_card(row.fits)})")
        for quantization in SAVERS_COLUMNS:
            row = by_quant[quantization]
            cells.append(f"{row.savers_total_gib:.1f} ({_smallest_card(row.savers_fits)})")
        body.append(cells)
    return _render(header, body, markdown, numeric_from=4)


def model_rows(spec: ModelSpec, ranks: Sequence[int], batch: int, checkpointing: Sequence[bool]) -> list[PlanRow]:
    """Rows for every rank x size x checkpointing of ``spec``, sorted by quantization, then setting."""
    rows: list[PlanRow] = []
    for rank in ranks:
        for width, height, frames in spec.sizes:
            for ckpt in checkpointing:
                setting = Setting(rank, width, height, frames, batch, ckpt)
                print(f"{spec.name}: simulating {setting}", file=sys.stderr)
                rows += plan_rows(spec, setting)
    order = {q: i for i, q in enumerate(QUANTIZATIONS)}
    return sorted(rows, key=lambda r: (order[r.quantization], -r.checkpointing, r.rank))  # sizes stay in order


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=[*MODELS, "all"], default="flux-dev")
    parser.add_argument("--ranks", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--checkpointing", choices=["on", "off", "both"], default="both")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--compact", action="store_true", help="one line per setting, a total per quantization")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    ckpt = {"on": [True], "off": [False], "both": [True, False]}[args.checkpointing]
    names = list(MODELS) if args.model == "all" else [args.model]
    results = {name: model_rows(MODELS[name], args.ranks, args.batch, ckpt) for name in names}
    as_json = json.dumps({name: [asdict(r) for r in rows] for name, rows in results.items()}, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(as_json)
    if args.json:
        print(as_json)
        return
    for name, rows in results.items():
        print(f"\n{'### ' if args.markdown else ''}{name} (GiB, live tensor peak of one training step)\n")
        print((format_compact if args.compact else format_table)(rows, markdown=args.markdown))


if __name__ == "__main__":
    main()
