"""Quantize the frozen base model's Linear weights (int8, fp8, nf4) so a large model fits one GPU.

SCFM never needs a gradient through the base weights, and three of its four passes a step run
without gradient, so the base can be stored in 8 or 4 bits while the LoRA trains in fp32 on top:
peft wraps a quantized Linear exactly as a plain one (``y = base(x) + scale * B(A(x))``). The
teacher pass (LoRA off), both EMA passes and the student pass all use the same quantized base.

Libraries, and why:

- ``int8`` / ``fp8``: torchao's weight-only configs (``Int8WeightOnlyConfig``: one int8 per weight and
  a per-output-channel scale; ``Float8WeightOnlyConfig``: e4m3 with a per-channel scale). torchao is
  PyTorch's own quantization library, runs int8 on CPU and CUDA, and peft dispatches LoRA onto its
  tensors (``peft.tuners.lora.torchao``), so gradients reach the LoRA through the quantized matmul.
- ``nf4``: bitsandbytes' ``Linear4bit`` (the QLoRA format, block of 64 with an fp32 absmax), which
  peft has wrapped since QLoRA. Needs CUDA here.

fp8 weight-only matmuls need a CUDA GPU of compute capability 8.9 or newer (Ada, Hopper); nf4 needs
CUDA. :func:`quantization_problem` says why a combination is refused, before any weight loads.
"""

from __future__ import annotations

import importlib.util
import re
import warnings
from collections.abc import Sequence

import torch
from torch import nn

BASE_QUANTIZATIONS = ("none", "int8", "fp8", "nf4")
"""Storage of the frozen base's Linear weights: none (the model's dtype), int8, fp8 (e4m3) or nf4."""
LIBRARY = {"int8": "torchao", "fp8": "torchao", "nf4": "bitsandbytes"}
"""The library each quantization needs (pip install scfm[quantization] installs both)."""
FP8_CAPABILITY = (8, 9)
"""Oldest CUDA compute capability with fp8 matmuls (Ada Lovelace: RTX 40xx, L4; Hopper: H100)."""


def quantization_problem(mode: str, device: torch.device | str | None = None) -> str | None:
    """Why ``base_quantization=mode`` cannot run on ``device`` (None: only the library is checked),
    as one sentence with the fix; None when it can."""
    if mode not in BASE_QUANTIZATIONS:
        return f"must be one of {BASE_QUANTIZATIONS}"
    if mode == "none":
        return None
    library = LIBRARY[mode]
    if importlib.util.find_spec(library) is None:
        return f"needs {library}: pip install 'scfm[quantization]' (or pip install {library})"
    if device is None:
        return None
    device = torch.device(device)
    if mode == "nf4" and device.type != "cuda":
        return f"nf4 (bitsandbytes 4-bit) needs a CUDA device, the run is on {device}; use int8 on this device"
    if mode == "fp8":
        if device.type != "cuda":
            return f"fp8 matmuls need a CUDA GPU (compute capability >= 8.9), the run is on {device}; use int8"
        capability = torch.cuda.get_device_capability(device)
        if capability < FP8_CAPABILITY:
            return (
                f"fp8 matmuls need compute capability >= 8.9 (Ada, Hopper), {torch.cuda.get_device_name(device)} "
                f"has {capability[0]}.{capability[1]}; use int8"
            )
    return None


def check_quantization(mode: str, device: torch.device | str | None = None) -> None:
    """Raise ``ValueError`` naming the field, the value and the fix when :func:`quantization_problem` finds one."""
    problem = quantization_problem(mode, device)
    if problem:
        raise ValueError(f"base_quantization={mode!r}: {problem}")


def _excluded(name: str, exclude: Sequence[str]) -> bool:
    return any(name == e or name.endswith("." + e) or re.fullmatch(e, name) for e in exclude if e)


def is_quantizable(name: str, module: nn.Module, exclude: Sequence[str] = ()) -> bool:
    """Whether :func:`quantize_base` quantizes ``module`` (named ``name``): a floating-point ``nn.Linear`` with at
    least 16 input features (smaller ones gain nothing and sit below the int8 kernels' tile) whose name is not and
    does not end with an ``exclude`` suffix (nor fully matches it as a regex)."""
    return (
        type(module) is nn.Linear
        and module.weight.is_floating_point()
        and module.in_features >= 16
        and not _excluded(name, exclude)
    )


def quantizable_linears(model: nn.Module, exclude: Sequence[str] = ()) -> list[str]:
    """Names of the layers of ``model`` :func:`quantize_base` quantizes (:func:`is_quantizable`)."""
    return [name for name, module in model.named_modules() if is_quantizable(name, module, exclude)]


@torch.no_grad()
def quantize_base(
    model: nn.Module, mode: str, exclude: Sequence[str] = (), device: torch.device | str | None = None
) -> list[str]:
    """Quantize ``model``'s Linear weights in place before LoRA is attached, and move it to ``device``.

    ``mode``: one of :data:`BASE_QUANTIZATIONS` ("none" only moves the model). ``exclude``: module-name
    suffixes kept in their dtype (a family's output layers). Each Linear goes to ``device`` (None: where it
    is) just before it is quantized, so a model loaded on the CPU never has its full-precision weights on
    the GPU at once (FLUX.1's 24 GB of bf16 would not fit the card the int8 base fits). Returns the names
    of the quantized layers. The model must be frozen base weights: quantized weights take no gradient.
    """
    check_quantization(mode, None)
    if mode == "none":
        if device is not None:
            model.to(device)
        return []
    names = quantizable_linears(model, exclude)
    if not names:
        raise ValueError(
            f"base_quantization={mode!r}: {type(model).__name__} has no nn.Linear layer with >= 16 input features "
            "outside the excluded ones; set base_quantization: none"
        )
    model.requires_grad_(False)
    if mode == "nf4":
        _to_nf4(model, names, device)
    else:
        _torchao(model, mode, set(names), device)
    if device is not None:
        model.to(device)  # the rest (norms, embeddings, excluded layers); quantized layers are there already
    return names


def _torchao(model: nn.Module, mode: str, names: set[str], device: torch.device | str | None) -> None:
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

    config = Int8WeightOnlyConfig() if mode == "int8" else Float8WeightOnlyConfig()
    quantize_(model, config, filter_fn=lambda module, fqn: fqn in names, device=device)  # moves each layer first


def _to_nf4(model: nn.Module, names: Sequence[str], device: torch.device | str | None = None) -> None:
    import bitsandbytes as bnb

    for name in names:
        linear = model.get_submodule(name)
        device = linear.weight.device if device is None else device
        q = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            compute_dtype=linear.weight.dtype,
            compress_statistics=False,  # one fp32 absmax per 64 weights (diffusers' default; the memory plan's)
            quant_type="nf4",
            device="meta",
        )
        q.weight = bnb.nn.Params4bit(
            linear.weight.data.cpu(), requires_grad=False, quant_type="nf4", compress_statistics=False
        )
        if linear.bias is not None:
            q.bias = nn.Parameter(linear.bias.data, requires_grad=False)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, q.to(device))


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor holds, counting the inner tensors of a quantized tensor subclass (torchao's
    qdata + scale + zero point) and bitsandbytes' 4-bit quantization state (absmax, code)."""
    flatten = getattr(type(tensor), "__tensor_flatten__", None)
    if flatten is not None and type(tensor) not in (torch.Tensor, nn.Parameter):
        names, _ = tensor.__tensor_flatten__()
        return sum(tensor_bytes(getattr(tensor, n)) for n in names if getattr(tensor, n) is not None)
    total = tensor.numel() * tensor.element_size()
    state = getattr(tensor, "quant_state", None)
    if state is not None:
        total += sum(t.numel() * t.element_size() for t in (state.absmax, state.code) if t is not None)
    return total


def base_bytes(model: nn.Module) -> int:
    """Live bytes of ``model``'s frozen base: every parameter and buffer except the LoRA tensors."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tensors = [p for n, p in model.named_parameters() if "lora_" not in n]
        tensors += [b for n, b in model.named_buffers() if "lora_" not in n]
    return sum(tensor_bytes(t) for t in tensors)
