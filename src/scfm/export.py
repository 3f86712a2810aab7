"""Export a distilled diffusers LoRA for use outside scfm (diffusers pipelines, ComfyUI).

Two formats, both plain safetensors:

:func:`export_diffusers_lora` - diffusers / peft key format::

    transformer.<module path>.lora_A.weight   [rank, in]
    transformer.<module path>.lora_B.weight   [out, rank]

which ``FluxPipeline.load_lora_weights``, ``StableDiffusion3Pipeline.load_lora_weights`` and
``transformer.load_lora_adapter(path, prefix="transformer")`` accept as is (ComfyUI reads the
same keys for Flux and SD3). This format has no per-module alpha: diffusers builds the peft
config with ``lora_alpha = rank`` (scale 1, ``W + B @ A``) when the file carries no alphas.
So the LoRA scale of each layer (``alpha / rank`` as trained, read from the peft layer) is
BAKED INTO ``lora_B``: the file's ``B @ A`` is exactly the delta the distilled model applies.
(Consequently ``lora_B`` in the file differs from ``DistilledModel.save``'s ``lora_B`` by that
factor whenever ``lora_alpha != lora_rank``.)

:func:`export_kohya_lora` - kohya-style keys (``lora_down`` / ``lora_up`` / ``alpha``) under the
name ComfyUI maps onto each module of the family's model (the adapter's ``comfyui_lora_key``)::

    <name>.lora_down.weight   (= lora_A)
    <name>.lora_up.weight     (= lora_B, unscaled)
    <name>.alpha              (0-dim float32 tensor)

the delta being ``alpha / rank * up @ down``, exactly the trained one. For Flux and SD3 the name
is the OneTrainer form ``lora_transformer_<diffusers module path, "." -> "_">``
(``lora_transformer_transformer_blocks_0_attn_to_q``, not the BFL ``double_blocks_0_img_attn_qkv``):
ComfyUI maps these diffusers names onto its Flux and SD3 models only (the "OneTrainer" entries of
``comfy.lora.model_lora_keys_unet``). ``lora_unet_`` is not used: for Flux that prefix means BFL
module names (fused qkv), which would need re-packing. For Wan, whose ComfyUI model maps no
diffusers names, the name is the original Wan module under ``diffusion_model.``
(``diffusion_model.blocks.0.self_attn.q`` for ``blocks.0.attn1.to_q``; ComfyUI's generic entries);
a module without one (a fused projection) is refused with a ``ValueError`` before anything is written.
diffusers' own Flux kohya loader (``_convert_kohya_flux_lora_to_diffusers``, the
``lora_transformer_`` "mixture" branch) reads these keys with the correct alpha scaling, but
only maps the attention projections and the top-level embedders/output layers; it does not
map feed-forward, adaptive-norm or single-block MLP layers (it raises or misnames them), so
use :func:`export_diffusers_lora` for diffusers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scfm.fileio import atomic_save_safetensors
from scfm.weights.lora import ADAPTER, has_lora

PREFIX = "transformer"


def _diffusers_model(result: Any) -> nn.Module:
    model = getattr(result, "model", result)
    if not isinstance(model, nn.Module) or not isinstance(getattr(model, "transformer", None), nn.Module):
        raise ValueError(
            f"export needs a distilled diffusers adapter (scfm.models FluxAdapter / SD3Adapter, whose "
            f"`.transformer` is the diffusers transformer); got {type(model).__name__} without a `.transformer`. "
            "Distill a model wrapped in its adapter (e.g. FluxAdapter(transformer)), or save a non-diffusers "
            "result with DistilledModel.save()."
        )
    if not has_lora(model.transformer):
        raise ValueError(
            f"{type(model).__name__}.transformer carries no LoRA layers; export the DistilledModel returned by "
            "scfm.distill (or scfm.load), not the bare teacher"
        )
    return model


def lora_factors(result: Any) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """``{diffusers module path: (A [r, in], B [out, r], scale)}`` of the transformer's LoRA, where the
    layer's delta is ``scale * B @ A`` (scale = the peft layer's ``scaling``, alpha / rank)."""
    from peft.tuners.lora import LoraLayer

    model = _diffusers_model(result)
    out: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    for name, module in model.transformer.named_modules():
        if not isinstance(module, LoraLayer) or ADAPTER not in module.lora_A:
            continue
        if getattr(module, "use_dora", {}).get(ADAPTER, False):
            raise ValueError(f"DoRA layer {name} cannot be exported as a plain LoRA")
        if module.lora_B[ADAPTER].bias is not None:
            raise ValueError(f"LoRA layer {name} has a lora_B bias; export supports bias-free LoRA only")
        a = module.lora_A[ADAPTER].weight.detach()
        b = module.lora_B[ADAPTER].weight.detach()
        out[name] = (a, b, float(module.scaling[ADAPTER]))
    return out


def _cast(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return t.to(dtype) if dtype is not None else t


def _check_target(path: str | os.PathLike, overwrite: bool) -> Path:
    """``path`` as a Path, checked to be writable as an export file.

    Raises ``FileExistsError`` naming the path when it is a folder, or an existing file and
    ``overwrite`` is False (an export never replaces a file unless asked to).
    """
    path = Path(path)
    if path.is_dir():
        raise FileExistsError(f"{str(path)!r} is a folder; export a LoRA file to a .safetensors path")
    if not overwrite and (path.exists() or path.is_symlink()):
        raise FileExistsError(
            f"{str(path)!r} already exists; pass overwrite=True to replace it, or choose another path"
        )
    return path


def export_diffusers_lora(
    result: Any,
    path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write the LoRA of a distilled Flux/SD3 adapter as a diffusers-format safetensors file.

    Keys ``transformer.<module path>.lora_A.weight`` / ``.lora_B.weight``; the per-layer scale
    ``alpha / rank`` is multiplied into ``lora_B`` (the format has no alpha; diffusers loads it with
    scale 1), so the loaded delta is exact. Load with ``pipe.load_lora_weights(path)`` or
    ``transformer.load_lora_adapter(path, prefix="transformer")``. ``dtype`` casts the tensors
    (default: as trained, float32); ``metadata`` (str -> str, e.g. :func:`usage_metadata`) is stored in the
    file's header, with diffusers' ``lora_adapter_metadata`` (the peft LoraConfig it loads the file with).
    Raises ``ValueError`` when ``result`` is not a diffusers adapter, and ``FileExistsError`` when ``path``
    exists and ``overwrite`` is False (the file is written atomically).
    """
    path = _check_target(path, overwrite)
    tensors: dict[str, torch.Tensor] = {}
    factors = lora_factors(result)
    for name, (a, b, scale) in factors.items():
        tensors[f"{PREFIX}.{name}.lora_A.weight"] = _cast(a, dtype)
        tensors[f"{PREFIX}.{name}.lora_B.weight"] = _cast(b.float() * scale, dtype)
    header = {**(metadata or {}), LORA_ADAPTER_METADATA_KEY: adapter_metadata(factors), "format": "pt"}
    return atomic_save_safetensors(tensors, path, metadata=header)


LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"
"""diffusers' header key (``diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY``, diffusers >= 0.34): JSON of
the peft ``LoraConfig`` kwargs, each prefixed with the component (``transformer.r``)."""


def adapter_metadata(factors: dict[str, tuple[torch.Tensor, torch.Tensor, float]]) -> str:
    """diffusers' ``lora_adapter_metadata`` for a diffusers-format file of ``factors`` (alpha / rank baked into
    ``lora_B``, so ``lora_alpha = r``): r, lora_alpha and the exact module paths, plus per-module ranks where they
    differ. diffusers then builds the LoraConfig from it instead of guessing from the tensor shapes."""
    ranks = {name: int(a.shape[0]) for name, (a, _, _) in factors.items()}
    r = max(set(ranks.values()), key=list(ranks.values()).count) if ranks else 0
    pattern = {name: k for name, k in ranks.items() if k != r}
    config = {
        "r": r,
        "lora_alpha": r,
        "target_modules": sorted(ranks),
        "rank_pattern": pattern,
        "alpha_pattern": dict(pattern),
        "use_dora": False,
    }
    return json.dumps({f"{PREFIX}.{k}": v for k, v in config.items()}, indent=2, sort_keys=True)


def kohya_name(module_path: str, adapter: type) -> str:
    """The ComfyUI LoRA name of the transformer module ``module_path`` (its diffusers path) in the family of the
    adapter class ``adapter`` (its ``comfyui_lora_key``; Flux / SD3: ``transformer_blocks.0.attn.to_q`` ->
    ``lora_transformer_transformer_blocks_0_attn_to_q``). Raises ``ValueError`` naming the module when the family's
    ComfyUI model has no weight for it, or scfm knows no ComfyUI names for the family."""
    return adapter.comfyui_lora_key(module_path)


def export_kohya_lora(
    result: Any,
    path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write the LoRA as kohya-style keys for ComfyUI (see the module docstring for the naming).

    Per layer: ``<name>.lora_down.weight`` = A, ``<name>.lora_up.weight`` = B and ``<name>.alpha``
    = scale * rank (the trained lora_alpha), so that ``alpha / rank * up @ down`` is the exact delta; ``<name>``
    is :func:`kohya_name` for the result's adapter class. Raises ``ValueError`` before writing anything when
    ComfyUI has no name for some LoRA module (or two modules would share one), and ``FileExistsError`` when
    ``path`` exists and ``overwrite`` is False (the file is written atomically).
    """
    from collections import Counter

    path = _check_target(path, overwrite)
    factors = lora_factors(result)
    adapter = type(_diffusers_model(result))
    keys = {name: kohya_name(name, adapter) for name in factors}  # every name first: refuse before writing
    uses = Counter(keys.values())
    shared = sorted(name for name, key in keys.items() if uses[key] > 1)
    if shared:
        raise ValueError(f"modules {shared} would share a ComfyUI LoRA name; leave all but one out of the LoRA")
    tensors: dict[str, torch.Tensor] = {}
    for name, (a, b, scale) in factors.items():
        key = keys[name]
        tensors[f"{key}.lora_down.weight"] = _cast(a, dtype)
        tensors[f"{key}.lora_up.weight"] = _cast(b, dtype)
        tensors[f"{key}.alpha"] = torch.tensor(scale * a.shape[0], dtype=torch.float32)
    return atomic_save_safetensors(tensors, path, metadata={**(metadata or {}), "format": "pt"})


@dataclass
class LoraUsage:
    """How to use an exported LoRA, written into its file header by :func:`usage_metadata`."""

    architecture: str
    """sai_model_spec architecture of the base (``flux-1-dev``); ``/lora`` is appended."""
    base_model: str
    """The base pipeline's Hub id or folder name."""
    rank: int
    alpha: float
    """The file's own alpha (a diffusers file bakes alpha / rank into ``lora_B``: alpha = rank)."""
    lora_scales: dict[int, float]
    """Calibrated LoRA strength per step count (empty: none calibrated)."""
    shift: float
    """Fixed shift of the Euler sampling grid the student is meant for."""
    guidance: float
    """Guidance in scfm's convention (embedded value, or CFG w; 0: none)."""
    cfg_mode: str | None
    """True-CFG families: runtime / baked / none; None otherwise."""
    final_weights: str
    title: str = ""
    resolution: str = ""
    merged_strength: float | None = None
    """A fused transformer: the LoRA strength merged into its weights (then no ``/lora`` suffix, no strengths)."""


def usage_metadata(usage: LoraUsage) -> dict[str, str]:
    """Safetensors header entries (str -> str): ``modelspec.*`` (sai_model_spec 1.0.0), kohya's
    ``ss_network_dim`` / ``ss_network_alpha``, and ``scfm.*`` (LoRA strength per step count, shift, guidance,
    CFG mode, recommended steps, base model, final weights)."""
    from datetime import datetime, timezone

    from scfm._version import __version__

    steps = sorted(usage.lora_scales) or [4]
    strengths = ", ".join(f"{n} steps: {usage.lora_scales[n]:g}" for n in steps if n in usage.lora_scales)
    merged = usage.merged_strength is not None
    hint = (
        f"SCFM few-step {'model (LoRA merged)' if merged else 'LoRA'}: plain Euler, {steps[0]}-{steps[-1]} steps, "
        f"shift {usage.shift:g}, guidance {usage.guidance:g}"
    )
    if merged:
        hint += f", LoRA strength {usage.merged_strength:g} merged"
    else:
        hint += f", LoRA strength {strengths}" if strengths else ", LoRA strength 1"
    meta = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": usage.architecture if merged else f"{usage.architecture}/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.title": usage.title or f"SCFM few-step LoRA for {usage.base_model}",
        "modelspec.date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "modelspec.usage_hint": hint,
        "scfm.version": __version__,
        "scfm.base_model": usage.base_model,
        "scfm.lora_scales": json.dumps({str(n): usage.lora_scales[n] for n in sorted(usage.lora_scales)}),
        "scfm.recommended_steps": json.dumps(steps),
        "scfm.shift": f"{usage.shift:g}",
        "scfm.guidance": f"{usage.guidance:g}",
        "scfm.final_weights": usage.final_weights,
    }
    if not merged:
        meta.update({"ss_network_dim": str(usage.rank), "ss_network_alpha": f"{usage.alpha:g}"})
    if usage.resolution:
        meta["modelspec.resolution"] = usage.resolution
    if usage.cfg_mode is not None:
        meta["scfm.cfg_mode"] = usage.cfg_mode
    if merged:
        meta["scfm.merged_lora_strength"] = f"{usage.merged_strength:g}"
    return meta


def read_usage(path: str | os.PathLike) -> tuple[dict[int, float], float | None]:
    """(LoRA strength per step count, sampling shift or None) from a LoRA file's ``scfm.*`` header entries; empty
    and None for files without them."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    try:
        scales = {int(n): float(k) for n, k in json.loads(meta.get("scfm.lora_scales", "{}")).items()}
        shift = float(meta["scfm.shift"]) if "scfm.shift" in meta else None
    except (ValueError, TypeError) as err:
        raise ValueError(f"{str(path)!r} has unreadable scfm.* metadata ({err}); re-export it") from err
    return scales, shift
