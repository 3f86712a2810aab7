"""The model boundary for diffusers transformers: one adapter class per model family.

An adapter is an ``nn.Module`` that wraps a diffusers transformer and exposes the one
interface the rest of scfm knows (SCFM_SPEC.md, Conventions)::

    v = adapter(x, t, **cond)

- ``x`` [B, C, H, W]: the UNPACKED VAE latent (already shifted and scaled as the pipeline
  does), float. Packing into tokens (Flux) or patches (SD3) happens inside the adapter.
- ``t`` [B] (or a 0-dim tensor) in [0, 1], t = 1 is noise: ``x_t = (1 - t) x0 + t eps``.
- ``cond``: text embeddings and other per-sample inputs, batch dim first (the keys are
  listed by each adapter's ``cond_keys``).
- ``v`` [B, C, H, W] in ``x.dtype``: the velocity ``eps - x0``.

How a model wants its time input (Flux: t; SD3: t * 1000), its latent layout, guidance
embedding and classifier-free guidance belong here, never to the objective.

The transformer is the attribute ``.transformer``, so LoRA target names are
``transformer.<diffusers module path>`` and the suffix targets of
:class:`scfm.weights.lora.LoraSpec` (``"attn.to_q"``, ``"ff.net.2"``, ...) match directly.
``default_lora_targets`` are the official SCFM targets for the family; ``recommended_config``
the :class:`scfm.DistillConfig` fields the official scripts set for it.

diffusers is an optional dependency: it is imported only when a transformer class is needed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

ADAPTERS: dict[str, type["VelocityAdapter"]] = {}
"""Registered adapter classes by name ('flux', 'sd3', ...)."""

_BUILTIN_MODULES = ("scfm.models.flux", "scfm.models.sd3")

A = TypeVar("A", bound=type)


def register_adapter(name: str) -> Callable[[A], A]:
    """Class decorator: register a :class:`VelocityAdapter` subclass under ``name``."""

    def wrap(cls: A) -> A:
        if name in ADAPTERS and ADAPTERS[name] is not cls:
            raise ValueError(f"adapter name {name!r} is already registered to {ADAPTERS[name].__name__}")
        ADAPTERS[name] = cls
        cls.adapter_name = name
        return cls

    return wrap


def get_adapter(name: str) -> type["VelocityAdapter"]:
    """The adapter class registered as ``name``; the built-in ones (flux, sd3) load on demand."""
    if name not in ADAPTERS:
        import importlib

        for module in _BUILTIN_MODULES:
            importlib.import_module(module)
    if name not in ADAPTERS:
        raise ValueError(f"no model adapter named {name!r}; choose one of {sorted(ADAPTERS)}")
    return ADAPTERS[name]


def import_diffusers():
    """Import diffusers or raise an ImportError that says how to install it."""
    try:
        import diffusers
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the diffusers model adapters need diffusers: pip install diffusers transformers sentencepiece") from err
    return diffusers


def expand_batch(value: torch.Tensor, batch_size: int, name: str) -> torch.Tensor:
    """Return ``value`` with batch dim ``batch_size`` (a leading dim of 1 is broadcast)."""
    if value.shape[0] == batch_size:
        return value
    if value.shape[0] == 1:
        return value.expand(batch_size, *value.shape[1:])
    raise ValueError(f"cond[{name!r}] has batch size {value.shape[0]} but x has {batch_size}; pass one row per sample (or a single row to broadcast)")


class VelocityAdapter(nn.Module):
    """Base class: ``forward(x, t, **cond) -> v`` in the spec's convention around ``.transformer``.

    Subclasses set ``transformer_class_name`` (the diffusers class they wrap),
    ``default_lora_targets``, ``cond_keys`` and implement :meth:`forward` and :meth:`seq_len`.
    """

    adapter_name: ClassVar[str] = ""
    transformer_class_name: ClassVar[str] = ""
    """The diffusers class name in the transformer's ``config.json`` (``_class_name``)."""
    default_lora_targets: ClassVar[tuple[str, ...]] = ()
    """Official LoRA targets (module-name suffixes): attention, MLP, norm and embedder Linears."""
    recommended_config: ClassVar[dict[str, Any]] = {}
    """DistillConfig fields the official scripts use for this family (``DistillConfig(**recommended_config)``)."""
    cond_keys: ClassVar[tuple[str, ...]] = ()
    """Every cond key :meth:`forward` accepts."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        name = type(transformer).__name__
        if self.transformer_class_name and name != self.transformer_class_name:
            raise ValueError(f"{type(self).__name__} wraps a {self.transformer_class_name}, got a {name}; use the adapter made for {name}")
        self.transformer = transformer

    # ------------------------------------------------------------------ interface
    def forward(self, x: torch.Tensor, t: torch.Tensor, **cond: Any) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def seq_len(self, x: torch.Tensor) -> int:  # pragma: no cover - abstract
        """Image token count the transformer sees for latents shaped like ``x`` (resolution shift input)."""
        raise NotImplementedError

    def student_pass(self) -> AbstractContextManager:
        """Context the training loop enters around the student prediction (with gradient).

        A no-op here; :class:`scfm.models.sd3.SD3Adapter` in baked-CFG mode turns guidance
        off inside it, so the student learns the guided velocity in one pass.
        """
        return nullcontext()

    # ------------------------------------------------------------------ helpers
    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def _check_cond(self, cond: dict[str, Any]) -> None:
        unknown = sorted(set(cond) - set(self.cond_keys))
        if unknown:
            raise ValueError(f"{type(self).__name__} got unknown cond key(s) {unknown}; it accepts {list(self.cond_keys)}")

    def _check_x_t(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """Validate x [B, C, H, W]; return t as a [B] tensor on x's device."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"{type(self).__name__} expects unpacked latents x [B, C, H, W], got shape {tuple(getattr(x, 'shape', ()))}")
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t has shape {tuple(t.shape)}; expected [B] = [{x.shape[0]}] (one time in [0, 1] per sample)")
        return t

    # ------------------------------------------------------------------ loading
    @classmethod
    def transformer_class(cls) -> type:
        return getattr(import_diffusers(), cls.transformer_class_name)

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike,
        subfolder: str | None = "transformer",
        torch_dtype: torch.dtype | None = None,
        local_files_only: bool = False,
        adapter_kwargs: dict[str, Any] | None = None,
        **kw: Any,
    ) -> "VelocityAdapter":
        """Load the transformer with diffusers and wrap it.

        ``path_or_id`` is a pipeline folder / Hub id (transformer in ``subfolder``) or, with
        ``subfolder=None``, the transformer folder itself. ``kw`` goes to diffusers'
        ``from_pretrained`` (``revision``, ``variant``, ``cache_dir``, ...); ``adapter_kwargs``
        to the adapter's constructor. Raises ``ValueError`` when the subfolder is missing,
        the config names another class, or the sibling ``scheduler/scheduler_config.json``
        is not a flow-matching scheduler.
        """
        model_cls = cls.transformer_class()
        path = os.fspath(path_or_id)
        sub = subfolder or None
        load_kw = dict(local_files_only=local_files_only, **{k: v for k, v in kw.items() if k in ("revision", "cache_dir", "token")})
        local = os.path.isdir(path)
        if local and sub is not None and not os.path.isdir(os.path.join(path, sub)):
            hint = ""
            if os.path.isfile(os.path.join(path, "config.json")):
                hint = f" {path!r} has a config.json of its own: if it is the transformer folder itself, pass subfolder=None."
            raise ValueError(
                f"{path!r} has no {sub!r} subfolder, so there is no transformer to load.{hint} "
                f"Pass the pipeline folder that contains {sub}/config.json, or set subfolder= to the folder holding the transformer."
            )
        try:
            config = model_cls.load_config(path, subfolder=sub, **load_kw)
        except (OSError, ValueError) as err:
            where = f"{path!r}" + (f" (subfolder {sub!r})" if sub else "")
            raise ValueError(f"could not read the transformer config from {where}: {err}. Check the path / Hub id and subfolder, or pass local_files_only=False to download.") from err
        found = config.get("_class_name")
        if found != cls.transformer_class_name:
            others = sorted(name for name, a in get_all_adapters().items() if a.transformer_class_name == found)
            fix = f"use the {others[0]!r} adapter (scfm.models.adapters.get_adapter({others[0]!r}))" if others else "point at a folder holding a " + cls.transformer_class_name
            raise ValueError(f"{path!r}{'/' + sub if sub else ''} holds a {found}, not a {cls.transformer_class_name}: {cls.__name__} cannot wrap it; {fix}")
        cls._check_scheduler(path, sub, local, load_kw)
        transformer = model_cls.from_pretrained(path, subfolder=sub, torch_dtype=torch_dtype, local_files_only=local_files_only, **kw)
        return cls(transformer, **(adapter_kwargs or {}))

    @staticmethod
    def _check_scheduler(path: str, sub: str | None, local: bool, load_kw: dict[str, Any]) -> None:
        """Raise if the sibling scheduler config exists and is not a flow-matching scheduler."""
        config = None
        if local:
            folder = Path(path) if sub is not None else Path(path).parent
            file = folder / "scheduler" / "scheduler_config.json"
            if file.is_file():
                config = json.loads(file.read_text())
        elif sub is not None:
            from diffusers import FlowMatchEulerDiscreteScheduler

            try:
                config = FlowMatchEulerDiscreteScheduler.load_config(path, subfolder="scheduler", **load_kw)
            except (OSError, ValueError):
                config = None  # no scheduler folder in the repo (or unreachable): nothing to check
        if config is None:
            return
        name = str(config.get("_class_name", ""))
        if "FlowMatch" not in name:
            raise ValueError(
                f"{path!r} uses the scheduler {name or '(unnamed)'}, not a flow-matching one: SCFM distills flow-matching "
                "(rectified-flow) models whose velocity is eps - x0, and this model was trained for another objective. "
                "Use a flow-matching model (Flux, SD3/SD3.5, ... with a FlowMatch*Scheduler)."
            )


def get_all_adapters() -> dict[str, type[VelocityAdapter]]:
    """All registered adapters, loading the built-in ones."""
    import importlib

    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    return dict(ADAPTERS)


def adapter_for(transformer: nn.Module, **kwargs: Any) -> VelocityAdapter:
    """Wrap ``transformer`` with the registered adapter for its class."""
    name = type(transformer).__name__
    for cls in get_all_adapters().values():
        if cls.transformer_class_name == name:
            return cls(transformer, **kwargs)
    raise ValueError(f"no scfm adapter wraps a {name}; adapters exist for {sorted(a.transformer_class_name for a in ADAPTERS.values())}")
