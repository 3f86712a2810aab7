"""Attach LoRA with peft to a model's Linear layers; list, enable, disable and scale it.

The LoRA starts with B = 0 (peft's default init), so the student starts as the teacher.
Every base weight is frozen; only LoRA tensors train. There is one copy of the base model.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

ADAPTER = "default"


@dataclass(frozen=True)
class LoraSpec:
    """Where and how big the LoRA is."""

    targets: tuple[str, ...] = ("qkv", "proj", "fc1", "fc2", "adaLN")
    """Module-name suffixes (or one regex, if it starts with '^') of the Linear layers to adapt."""
    rank: int = 64
    alpha: float = 64.0
    dropout: float = 0.0
    exclude: tuple[str, ...] = field(default_factory=tuple)
    """Module-name suffixes never adapted even if a target matches."""
    init: str = "kaiming"
    """How the A matrices start (B starts at zero, so the student starts as the teacher): 'kaiming'
    (peft's default, Kaiming-uniform) or 'gaussian' (normal with std 1/rank: peft's
    init_lora_weights="gaussian", the official SCFM scripts' choice)."""


def linear_module_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def _matches(name: str, spec: LoraSpec) -> bool:
    if len(spec.targets) == 1 and spec.targets[0].startswith("^"):
        hit = re.fullmatch(spec.targets[0], name) is not None
    else:
        hit = any(name == t or name.endswith("." + t) for t in spec.targets)
    return hit and not any(name == e or name.endswith("." + e) for e in spec.exclude)


def matching_modules(model: nn.Module, spec: LoraSpec) -> list[str]:
    """Names of the Linear modules ``spec`` would adapt."""
    return [name for name in linear_module_names(model) if _matches(name, spec)]


LORA_INITS = ("kaiming", "gaussian")


@torch.no_grad()
def init_lora(model: nn.Module, generator: torch.Generator, init: str = "kaiming") -> None:
    """Re-draw every LoRA A from ``generator`` and zero every B, so a run is reproducible from its
    seed without the global RNG. ``init``: 'kaiming' (peft's Kaiming-uniform) or 'gaussian'
    (normal, std 1 / rank, as peft's ``init_lora_weights="gaussian"``)."""
    if init not in LORA_INITS:
        raise ValueError(f"lora.init={init!r} must be one of {LORA_INITS}")
    for name, param in lora_named_parameters(model):
        if ".lora_A." in name:
            fresh = torch.empty(param.shape, dtype=torch.float32)
            if init == "gaussian":
                fresh.normal_(0.0, 1.0 / param.shape[0], generator=generator)
            else:
                nn.init.kaiming_uniform_(fresh, a=math.sqrt(5), generator=generator)
            param.copy_(fresh)
        else:
            param.zero_()


def attach_lora(model: nn.Module, spec: LoraSpec) -> nn.Module:
    """Freeze ``model`` and inject a LoRA adapter into the Linear layers ``spec`` selects.

    Raises ``ValueError`` (before touching the model) when no Linear layer matches, listing
    some of the model's Linear layer names so the user can fix ``lora.targets``.
    """
    if spec.rank < 1:
        raise ValueError(f"lora.rank={spec.rank} must be a positive integer")
    names = matching_modules(model, spec)
    if not names:
        sample = ", ".join(linear_module_names(model)[:12]) or "(the model has no nn.Linear layers)"
        raise ValueError(
            f"lora.targets={list(spec.targets)} match no nn.Linear module of {type(model).__name__}; "
            f"its Linear layers include: {sample}. Set lora.targets to some of these names."
        )
    model.requires_grad_(False)
    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=names)
    with warnings.catch_warnings():  # on a torchao-quantized base peft warns that merge() would fail; scfm never
        warnings.filterwarnings("ignore", message=".*get_apply_tensor_subclass.*")  # merges into a quantized base
        inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for _, param in lora_named_parameters(model):
        param.data = param.data.float()  # fp32 master weights even on a bf16/fp16 base model
        param.requires_grad_(True)
    return model


def lora_layers(model: nn.Module) -> list[LoraLayer]:
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def lora_named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of every LoRA A/B tensor, in a fixed order."""
    return [(n, p) for n, p in model.named_parameters() if "lora_" in n]


def has_lora(model: nn.Module) -> bool:
    return any(True for _ in lora_layers(model))


def set_lora_enabled(layers: Sequence[LoraLayer], enabled: bool) -> None:
    """Turn the LoRA delta on or off without touching ``requires_grad`` (unlike peft's
    ``enable_adapters``, which also flips gradients and walks every module)."""
    for layer in layers:
        layer._disable_adapters = not enabled


@contextmanager
def lora_scale(model: nn.Module, scale: float) -> Iterator[None]:
    """Multiply every LoRA delta by ``scale`` inside the block; restored on exit."""
    layers = lora_layers(model)
    saved = [dict(layer.scaling) for layer in layers]
    try:
        for layer in layers:
            layer.set_scale(ADAPTER, scale)
        yield
    finally:
        for layer, scaling in zip(layers, saved):
            layer.scaling.clear()
            layer.scaling.update(scaling)


@contextmanager
def row_lora_scale(model: nn.Module, scales: torch.Tensor | None) -> Iterator[None]:
    """Multiply the LoRA delta of batch row ``i`` by ``scales[i]`` inside the block (on top of the
    layers' own scale); None is a no-op.

    scales [B] (any float dtype, on the model's device): every LoRA layer must see the batch as
    its first dim (B rows), as the built-in and diffusers models do; a layer that sees another
    leading size raises ``ValueError`` (its rows cannot be matched to samples).
    """
    if scales is None:
        yield
        return

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        return _scaled_rows(out, scales)

    handles = [layer.lora_B[ADAPTER].register_forward_hook(hook) for layer in lora_layers(model)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class RowLoraScales:
    """Per-row LoRA scales that stay in force through a backward pass.

    :func:`row_lora_scale` removes its hooks when its block ends, but a gradient-checkpointed
    backward re-runs the forward later; inside :meth:`attached` the hooks stay on the model and read
    :attr:`scales` at every call, so :meth:`apply` with ``keep=True`` leaves the student's scales set
    for that recomputation. Outside :meth:`attached`, :meth:`apply` falls back to :func:`row_lora_scale`.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.scales: torch.Tensor | None = None
        self._attached = False

    @contextmanager
    def attached(self) -> Iterator[None]:
        """Hooks on every LoRA B layer for the block (a forward and its backward); scales cleared after."""
        handles = [layer.lora_B[ADAPTER].register_forward_hook(self._hook) for layer in lora_layers(self.model)]
        self._attached = True
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            self._attached, self.scales = False, None

    @contextmanager
    def apply(self, scales: torch.Tensor | None, keep: bool = False) -> Iterator[None]:
        """Run the block with ``scales`` [B] (None: unscaled); ``keep`` leaves them set afterwards."""
        if not self._attached:
            with row_lora_scale(self.model, scales):
                yield
            return
        before = self.scales
        self.scales = scales
        try:
            yield
        finally:
            if not keep:
                self.scales = before

    def _hook(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        return out if self.scales is None else _scaled_rows(out, self.scales)


def _scaled_rows(out: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    if out.shape[0] != scales.shape[0]:
        raise ValueError(
            f"a per-row LoRA scale for {scales.shape[0]} rows met a LoRA layer with leading size "
            f"{out.shape[0]}; step-dependent LoRA scaling needs models whose layers keep the batch first"
        )
    return out * scales.to(out.dtype).view(-1, *([1] * (out.dim() - 1)))


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """LoRA tensors keyed by their module path (``blocks.0.attn.qkv.lora_A.weight``), detached."""
    return {n.replace(f".{ADAPTER}", ""): p.detach() for n, p in lora_named_parameters(model)}


def load_lora_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy tensors from :func:`lora_state_dict` format into the model's LoRA; keys must match exactly."""
    params = {n.replace(f".{ADAPTER}", ""): p for n, p in lora_named_parameters(model)}
    missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise ValueError(
            f"LoRA weights do not fit this model: missing {missing[:5]} unexpected {unexpected[:5]}; "
            "load them into the same base model with the same lora.targets and rank"
        )
    with torch.no_grad():
        for name, param in params.items():
            if tensors[name].shape != param.shape:
                raise ValueError(
                    f"LoRA tensor {name} has shape {tuple(tensors[name].shape)}, model expects {tuple(param.shape)}"
                )
            param.copy_(tensors[name])


@torch.no_grad()
def fuse_lora(model: nn.Module, scale: float = 1.0) -> nn.Module:
    """Merge ``scale`` x the LoRA delta into the base weights and remove the LoRA layers."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    with lora_scale(model, scale):
        for layer in lora_layers(model):
            layer.merge()
    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
    return model
