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
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

ADAPTERS: dict[str, type[VelocityAdapter]] = {}
"""Registered adapter classes by name ('flux', 'sd3', ...)."""

_BUILTIN_MODULES = ("scfm.models.flux", "scfm.models.sd3", "scfm.models.wan")

A = TypeVar("A", bound=type)


def onetrainer_lora_key(module_path: str) -> str:
    """OneTrainer's ComfyUI LoRA name of a diffusers module: ``transformer_blocks.0.attn.to_q`` ->
    ``lora_transformer_transformer_blocks_0_attn_to_q`` (ComfyUI maps these for its Flux and SD3 models:
    ``comfy.lora.model_lora_keys_unet``)."""
    return "lora_transformer_" + module_path.replace(".", "_")


def register_adapter(name: str) -> Callable[[A], A]:
    """Class decorator: register a :class:`VelocityAdapter` subclass under ``name``."""

    def wrap(cls: A) -> A:
        if name in ADAPTERS and ADAPTERS[name] is not cls:
            raise ValueError(f"adapter name {name!r} is already registered to {ADAPTERS[name].__name__}")
        ADAPTERS[name] = cls
        cls.adapter_name = name
        return cls

    return wrap


def get_adapter(name: str) -> type[VelocityAdapter]:
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
        raise ImportError(
            "the diffusers model adapters need diffusers: pip install diffusers transformers sentencepiece"
        ) from err
    return diffusers


def dtype_kwargs(dtype: torch.dtype | None) -> dict[str, Any]:
    """The dtype keyword of diffusers' ``from_pretrained``: ``dtype`` (newer diffusers, which deprecate the old name)
    or ``torch_dtype``."""
    import importlib

    import_diffusers()
    try:
        utils = importlib.import_module("diffusers.utils.deprecation_utils")
    except ImportError:
        return {"torch_dtype": dtype}
    return (
        {"dtype": dtype} if hasattr(utils, "_resolve_dtype") else {"torch_dtype": dtype}
    )  # _resolve_dtype maps the old name


def expand_batch(value: torch.Tensor, batch_size: int, name: str) -> torch.Tensor:
    """Return ``value`` with batch dim ``batch_size`` (a leading dim of 1 is broadcast)."""
    if value.shape[0] == batch_size:
        return value
    if value.shape[0] == 1:
        return value.expand(batch_size, *value.shape[1:])
    raise ValueError(
        f"cond[{name!r}] has batch size {value.shape[0]} but x has {batch_size}; "
        "pass one row per sample (or a single row to broadcast)"
    )


class VelocityAdapter(nn.Module):
    """Base class: ``forward(x, t, **cond) -> v`` in the spec's convention around ``.transformer``.

    Subclasses set ``transformer_class_name`` (the diffusers class they wrap),
    ``default_lora_targets``, ``cond_keys`` and implement :meth:`forward` and :meth:`seq_len`.
    For the pipeline workflow (``scfm generate-data``, ``sample``, ``eval``) they also set
    ``pipeline_class_name`` and implement the class-level pipeline hooks :meth:`encode_prompts`,
    :meth:`generate_latents`, :meth:`encode_images` and :meth:`decode_latents`.
    """

    adapter_name: ClassVar[str] = ""
    transformer_class_name: ClassVar[str] = ""
    """The diffusers class name in the transformer's ``config.json`` (``_class_name``)."""
    default_lora_targets: ClassVar[tuple[str, ...]] = ()
    """Official LoRA targets (module-name suffixes): attention, MLP, norm and embedder Linears."""
    recommended_config: ClassVar[dict[str, Any]] = {}
    """DistillConfig fields (dotted names) the official scripts use for this family
    (``DistillConfig.from_dict(recommended_config)``)."""
    cond_keys: ClassVar[tuple[str, ...]] = ()
    """Every cond key :meth:`forward` accepts."""
    latent_ndim: ClassVar[int] = 4
    """Dims of the latents x: 4 for images [B, C, H, W], 5 for video [B, C, F, h, w]."""
    pipeline_class_name: ClassVar[str] = ""
    """The diffusers pipeline class of the family ("FluxPipeline", "StableDiffusion3Pipeline"): what
    :func:`load_pipeline` builds and what the pipeline hooks below are written against."""

    true_cfg: ClassVar[bool] = False
    """Whether the family guides by true CFG (``v_c + w (v_c - v_neg)``, two passes a step) rather than
    an embedded guidance value (Flux.1-dev) or none."""
    default_guidance: ClassVar[float] = 3.5
    """Sampling guidance in scfm's convention: the embedded value, or the CFG w of true-CFG families."""
    default_shift: ClassVar[float] = 1.0
    """Fixed shift of the sampling grid the family's students are sampled with by default (matching the
    shifted grids they are trained on); ``"auto"`` at sampling uses the resolution shift instead."""
    counted_text: ClassVar[bool] = False
    """Whether :meth:`forward` accepts ``text_log_count`` (:mod:`scfm.models.counted_text`): the text cut to its
    distinct prefix plus one counted padding token, exact where the padding embeddings are identical."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        name = type(transformer).__name__
        if self.transformer_class_name and name != self.transformer_class_name:
            raise ValueError(
                f"{type(self).__name__} wraps a {self.transformer_class_name}, got a {name}; "
                f"use the adapter made for {name}"
            )
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

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the transformer's activations in the backward pass (diffusers' own switch)."""
        self.transformer.enable_gradient_checkpointing()

    # ------------------------------------------------------------------ family traits
    @classmethod
    def guidance_kwargs(cls, cfg_scale: float, cfg_mode: str) -> dict[str, Any]:
        """Constructor keywords that carry a run's CFG settings: {} here; true-CFG families take them."""
        return {}

    @classmethod
    def pipeline_guidance_scale(cls, guidance: float) -> float:
        """The pipeline's ``guidance_scale`` for scfm's ``guidance``: ``w + 1`` under true CFG, else the value."""
        return guidance + 1.0 if cls.true_cfg else guidance

    @classmethod
    def passes_per_step(cls, guidance: float) -> int:
        """Transformer passes one sampling step costs at ``guidance``: 2 under true CFG with w > 0, else 1."""
        return 2 if cls.true_cfg and guidance > 0 else 1

    @classmethod
    def pipeline_seq_len(cls, pipe: Any, height: int | None, width: int | None) -> int:
        """Image tokens the transformer sees at ``height`` x ``width`` pixels (None: the pipeline's
        default size): the input of the resolution shift. Latent side / patch size, squared."""
        patch = getattr(pipe.transformer.config, "patch_size", 1) or 1
        patch = patch[-1] if isinstance(patch, (list, tuple)) else patch
        side = pipe.default_sample_size * pipe.vae_scale_factor
        h, w = (height or side) // pipe.vae_scale_factor, (width or side) // pipe.vae_scale_factor
        return (h // patch) * (w // patch)

    @classmethod
    def pipeline_latents(cls, pipe: Any, latents: torch.Tensor, height: int | None, width: int | None) -> torch.Tensor:
        """A pipeline's ``output_type="latent"`` result -> x0 in the adapter convention (here unchanged).

        ``height`` / ``width`` are the requested pixel sizes (None: the pipeline's default).
        """
        return latents

    @classmethod
    def modelspec_architecture(cls, transformer_config: Mapping[str, Any]) -> str:
        """The base model's ``modelspec.architecture`` (sai_model_spec 1.0, without the ``/lora`` suffix) for a
        transformer with this ``config.json``; here the adapter's name."""
        return cls.adapter_name

    @classmethod
    def comfyui_lora_key(cls, module_path: str) -> str:
        """The LoRA name ComfyUI maps onto the transformer module ``module_path`` (its diffusers path, e.g.
        ``transformer_blocks.0.attn.to_q``): the base of the ``.lora_up.weight`` / ``.lora_down.weight`` / ``.alpha``
        keys of a ComfyUI LoRA file (:func:`scfm.export.export_kohya_lora`).

        Families override it with the names ComfyUI's model takes (Flux, SD3: :func:`onetrainer_lora_key`; Wan: its
        native ``diffusion_model.<module>`` names) and raise ``ValueError`` naming a module ComfyUI has no weight
        for. Here (a family whose ComfyUI names nobody checked): ``ValueError``, since ComfyUI would skip every key.
        """
        raise ValueError(
            f"ComfyUI's LoRA key names for the {cls.adapter_name or cls.__name__} family are not known to scfm, so "
            f"ComfyUI would skip every key of {module_path!r}; export --format diffusers instead"
        )

    quantization_exclude: ClassVar[tuple[str, ...]] = ("transformer.proj_out", "transformer.norm_out.linear")
    """Module names (from the adapter) a quantized base (``base_quantization``) keeps in the model's dtype: the final
    norm's modulation and the output projection, which write the velocity directly (40 MB of FLUX.1's 24 GB)."""

    pipeline_tag: ClassVar[str] = "text-to-image"
    """The Hub's ``pipeline_tag`` for the family's pipelines (model cards)."""

    @classmethod
    def base_license(cls, base_model: str) -> dict[str, str]:
        """Model-card license fields of a known base model id (``license``; with ``"other"`` also ``license_name``
        and ``license_link``); {} when the base is not one the family knows."""
        return {}

    @classmethod
    def comfyui_settings(cls, shift: float, guidance: float) -> list[tuple[str, str]]:
        """(ComfyUI node input, value) rows that sample the student as scfm does: Euler on the ``simple`` schedule
        (``1 - i / n``, shifted) with the grid's fixed ``shift`` set by ``ModelSamplingSD3`` and ``guidance`` in
        scfm's convention (true CFG: KSampler cfg = w + 1; otherwise cfg 1)."""
        cfg = cls.pipeline_guidance_scale(guidance) if cls.true_cfg else 1.0
        return [
            ("ModelSamplingSD3 shift", f"{shift:g}"),
            ("KSampler sampler_name", "euler"),
            ("KSampler scheduler", "simple"),
            ("KSampler cfg", f"{cfg:g}"),
        ]

    @classmethod
    def compact_cond(cls, cond: dict[str, Any]) -> dict[str, Any]:
        """``cond`` with its padded text cut where that is exact (:func:`scfm.models.counted_text.compact_text_cond`)
        for families with ``counted_text``; unchanged otherwise. Caches store full text; batches are cut."""
        if not cls.counted_text:
            return cond
        from scfm.models.counted_text import compact_text_cond

        return compact_text_cond(cond)

    @classmethod
    @contextmanager
    def pipeline_prompt_kwargs(cls, pipe: Any, prompts: list[str], device: torch.device | str) -> Iterator[dict]:
        """The pipeline call's text keywords for ``prompts`` (``prompt_embeds`` and the rest, negatives expanded to
        B rows), cut by :meth:`compact_cond`; inside the block the transformer counts the cut padding, so
        ``pipe(**kwargs, ...)`` equals ``pipe(prompt=prompts, ...)`` to float rounding."""
        from scfm.models.counted_text import text_counts

        cond = cls.compact_cond(cls.encode_prompts(pipe, list(prompts), device))
        with text_counts(pipe.transformer, cond) as kwargs:
            yield {k: expand_batch(v, len(prompts), k) if k.startswith("negative_") else v for k, v in kwargs.items()}

    # ------------------------------------------------------------------ pipeline hooks
    # Used by `scfm generate-data` (teacher cache), `scfm sample` / `scfm eval`. They take a
    # loaded diffusers pipeline of class ``pipeline_class_name`` and never touch the adapter
    # instance: distillation itself needs only the transformer.

    @classmethod
    def encode_prompts(cls, pipe: Any, prompts: list[str], device: torch.device | str) -> dict[str, torch.Tensor]:
        """Text embeddings of ``prompts`` as :meth:`forward`'s cond: batch-first float tensors on ``device``.

        Per-prompt keys have one row per prompt ([B, ...], in the text encoders' dtype). Families
        with true CFG also return the negative (empty prompt "") embeddings under keys starting
        with ``negative_``: ONE row ([1, ...]) shared by every prompt (the teacher cache stores
        them once; :func:`expand_batch` broadcasts them). Guidance values (Flux.1-dev's
        embedded guidance) are not text and are not returned.
        """
        raise NotImplementedError(f"{cls.__name__} does not implement encode_prompts (pipeline hooks)")

    @classmethod
    def generate_latents(
        cls,
        pipe: Any,
        prompts: list[str],
        height: int,
        width: int,
        steps: int,
        guidance: float,
        generator: torch.Generator | list[torch.Generator],
    ) -> torch.Tensor:
        """Teacher samples of ``prompts`` with the pipeline's own sampler (``output_type='latent'``).

        ``height`` x ``width`` in pixels, ``steps`` the pipeline's ``num_inference_steps`` on its
        own schedule, ``guidance`` in scfm's convention for the family (Flux.1-dev: the embedded
        guidance value, e.g. 3.5; SD3: w in ``v_c + w (v_c - v_neg)``, the pipeline gets ``w + 1``).
        ``generator``: one ``torch.Generator`` or a list with one per prompt (diffusers semantics:
        pass it to the pipeline unchanged; the teacher cache passes one CPU generator per sample
        so every sample's noise depends on its own seed only).
        Returns x0 [B, C, h, w] float32 in the adapter's convention: unpacked and normalized
        exactly as the transformer sees latents (``(z - shift_factor) * scaling_factor``).
        """
        raise NotImplementedError(f"{cls.__name__} does not implement generate_latents (pipeline hooks)")

    @classmethod
    def encode_images(
        cls, pipe: Any, images: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None = None
    ) -> torch.Tensor:
        """Images [B, 3, H, W] in [-1, 1] -> x0 [B, C, H/f, W/f] float32, the latent space of :meth:`generate_latents`.

        With a ``generator`` the VAE posterior is sampled, without one its mean (mode) is used.
        """
        raise NotImplementedError(f"{cls.__name__} does not implement encode_images (pipeline hooks)")

    @classmethod
    def decode_latents(cls, pipe: Any, x0: torch.Tensor) -> torch.Tensor:
        """x0 [B, C, h, w] (the adapter's convention) -> images [B, 3, h*f, w*f] float32 in [0, 1]."""
        raise NotImplementedError(f"{cls.__name__} does not implement decode_latents (pipeline hooks)")

    @classmethod
    def pixel_multiple(cls, path_or_id: str | os.PathLike, local_files_only: bool = False) -> int | None:
        """Image sides must be multiples of this many pixels (VAE downsampling x transformer patch).

        Read from the pipeline's ``vae/config.json`` (``2 ** (len(block_out_channels) - 1)``) and
        ``transformer/config.json`` (``patch_size``) without loading weights; None when unknown
        (then only the pipeline itself checks sizes). Flux overrides it (2x2 packing).
        """
        vae = read_component_config(path_or_id, "vae", local_files_only)
        transformer = read_component_config(path_or_id, "transformer", local_files_only)
        blocks = (vae or {}).get("block_out_channels")
        if not blocks:
            return None
        patch = (transformer or {}).get("patch_size") or 1
        patch = patch[-1] if isinstance(patch, (list, tuple)) else patch
        return 2 ** (len(blocks) - 1) * int(patch)

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
            raise ValueError(
                f"{type(self).__name__} got unknown cond key(s) {unknown}; it accepts {list(self.cond_keys)}"
            )

    def _check_x_t(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """Validate x ([B, C, H, W], or [B, C, F, h, w] when ``latent_ndim`` is 5); return t as a [B] tensor on
        x's device."""
        if not isinstance(x, torch.Tensor) or x.dim() != self.latent_ndim:
            layout = "video latents x [B, C, F, h, w]" if self.latent_ndim == 5 else "unpacked latents x [B, C, H, W]"
            raise ValueError(f"{type(self).__name__} expects {layout}, got shape {tuple(getattr(x, 'shape', ()))}")
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(
                f"t has shape {tuple(t.shape)}; expected [B] = [{x.shape[0]}] (one time in [0, 1] per sample)"
            )
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
    ) -> VelocityAdapter:
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
        load_kw = dict(
            local_files_only=local_files_only,
            **{k: v for k, v in kw.items() if k in ("revision", "cache_dir", "token")},
        )
        local = os.path.isdir(path)
        if local and sub is not None and not os.path.isdir(os.path.join(path, sub)):
            hint = ""
            if os.path.isfile(os.path.join(path, "config.json")):
                hint = (
                    f" {path!r} has a config.json of its own: if it is the transformer folder itself, "
                    "pass subfolder=None."
                )
            raise ValueError(
                f"{path!r} has no {sub!r} subfolder, so there is no transformer to load.{hint} "
                f"Pass the pipeline folder that contains {sub}/config.json, "
                "or set subfolder= to the folder holding the transformer."
            )
        try:
            config = model_cls.load_config(path, subfolder=sub, **load_kw)
        except (OSError, ValueError) as err:
            where = f"{path!r}" + (f" (subfolder {sub!r})" if sub else "")
            raise ValueError(
                f"could not read the transformer config from {where}: {err}. "
                "Check the path / Hub id and subfolder, or pass local_files_only=False to download."
            ) from err
        found = config.get("_class_name")
        if found != cls.transformer_class_name:
            others = sorted(name for name, a in get_all_adapters().items() if a.transformer_class_name == found)
            fix = (
                f"use the {others[0]!r} adapter (scfm.models.adapters.get_adapter({others[0]!r}))"
                if others
                else "point at a folder holding a " + cls.transformer_class_name
            )
            raise ValueError(
                f"{path!r}{'/' + sub if sub else ''} holds a {found}, not a {cls.transformer_class_name}: "
                f"{cls.__name__} cannot wrap it; {fix}"
            )
        cls._check_scheduler(path, sub, local, load_kw)
        transformer = model_cls.from_pretrained(
            path, subfolder=sub, local_files_only=local_files_only, **dtype_kwargs(torch_dtype), **kw
        )
        return cls(transformer, **(adapter_kwargs or {}))

    @staticmethod
    def _check_scheduler(path: str, sub: str | None, local: bool, load_kw: dict[str, Any]) -> None:
        """Raise if the sibling scheduler config exists and is not flow matching
        (:func:`is_flow_matching_scheduler`)."""
        config = read_scheduler_config(path, sub, local, load_kw)
        if config is None or is_flow_matching_scheduler(config):
            return
        name = str(config.get("_class_name", "")) or "(unnamed)"
        raise ValueError(
            f"{path!r} uses the scheduler {name}{_prediction_note(config)}, not a flow-matching one: "
            "SCFM distills flow-matching (rectified-flow) models whose velocity is eps - x0, and this model was "
            "trained for another objective. Use a flow-matching model (Flux, SD3/SD3.5, Wan, ...: "
            "a FlowMatch*Scheduler, or prediction_type='flow_prediction')."
        )


def is_flow_matching_scheduler(config: Mapping[str, Any]) -> bool:
    """Whether a diffusers scheduler config samples a flow-matching model (velocity ``eps - x0``).

    True for ``FlowMatch*`` schedulers and for any scheduler with
    ``prediction_type == "flow_prediction"`` (Wan's ``UniPCMultistepScheduler``, also
    ``DPMSolverMultistepScheduler``). ``use_flow_sigmas`` alone is not enough: it only spaces
    the sampler's grid, while ``prediction_type`` says what the network outputs.
    """
    return "FlowMatch" in str(config.get("_class_name", "")) or config.get("prediction_type") == "flow_prediction"


def _prediction_note(config: Mapping[str, Any]) -> str:
    kind = config.get("prediction_type")
    return f" with prediction_type={kind!r}" if kind else ""


def read_scheduler_config(path: str, sub: str | None, local: bool, load_kw: dict[str, Any]) -> dict[str, Any] | None:
    """The sibling ``scheduler/scheduler_config.json`` of a transformer (local folder or Hub repo), or None if absent.

    Same lookup as :meth:`VelocityAdapter._check_scheduler`: ``path/scheduler`` when the
    transformer is in a subfolder, ``path/../scheduler`` when ``path`` is the transformer folder.
    """
    if local:
        folder = Path(path) if sub is not None else Path(path).parent
        file = folder / "scheduler" / "scheduler_config.json"
        return json.loads(file.read_text()) if file.is_file() else None
    if sub is None:
        return None
    from diffusers import FlowMatchEulerDiscreteScheduler

    try:  # load_config only reads scheduler_config.json, whatever scheduler class it names
        return dict(FlowMatchEulerDiscreteScheduler.load_config(path, subfolder="scheduler", **load_kw))
    except (OSError, ValueError):
        return None  # no scheduler folder in the repo (or unreachable): nothing to check


def get_all_adapters() -> dict[str, type[VelocityAdapter]]:
    """All registered adapters, loading the built-in ones."""
    import importlib

    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    return dict(ADAPTERS)


def adapter_for_pipeline(pipe: Any) -> type[VelocityAdapter]:
    """The registered adapter class for ``pipe.transformer``'s class."""
    name = type(pipe.transformer).__name__
    for cls in get_all_adapters().values():
        if cls.transformer_class_name == name:
            return cls
    raise ValueError(f"no scfm adapter wraps a {name}; pipelines of {sorted(get_all_adapters())} are supported")


def adapter_for(transformer: nn.Module, **kwargs: Any) -> VelocityAdapter:
    """Wrap ``transformer`` with the registered adapter for its class."""
    name = type(transformer).__name__
    for cls in get_all_adapters().values():
        if cls.transformer_class_name == name:
            return cls(transformer, **kwargs)
    raise ValueError(
        f"no scfm adapter wraps a {name}; "
        f"adapters exist for {sorted(a.transformer_class_name for a in ADAPTERS.values())}"
    )


# ---------------------------------------------------------------------- pipelines


def _config_reader() -> type:
    """A diffusers ``ConfigMixin`` that reads any component's ``config.json`` (local or Hub)."""
    from diffusers.configuration_utils import ConfigMixin

    class AnyConfig(ConfigMixin):
        config_name = "config.json"

    return AnyConfig


def _looks_like_local_path(path: str) -> bool:
    """A string that names a local path rather than a Hub id ("org/name")."""
    return path.startswith(("/", ".", "~")) or path.count("/") > 1 or os.sep != "/" and os.sep in path


def read_component_config(
    path_or_id: str | os.PathLike, component: str, local_files_only: bool = False
) -> dict[str, Any] | None:
    """``<component>/config.json`` (``scheduler_config.json`` for the scheduler) of a pipeline folder
    or Hub repo, without loading weights; None when it cannot be read."""
    diffusers = import_diffusers()
    path = os.fspath(path_or_id)
    if os.path.isdir(path):
        name = "scheduler_config.json" if component == "scheduler" else "config.json"
        file = Path(path) / component / name
        return json.loads(file.read_text()) if file.is_file() else None
    loader = diffusers.FlowMatchEulerDiscreteScheduler if component == "scheduler" else _config_reader()
    try:
        return dict(loader.load_config(path, subfolder=component, local_files_only=local_files_only))
    except (OSError, ValueError):
        return None


def adapter_class_for(path_or_id: str | os.PathLike, local_files_only: bool = False) -> type[VelocityAdapter]:
    """The adapter class for the pipeline at ``path_or_id`` (a folder or Hub id), read from
    ``transformer/config.json`` (``_class_name``) without loading any weights.

    Raises ``ValueError`` naming the problem and the fix: the path does not exist, it has no
    ``transformer`` subfolder, no scfm adapter wraps its transformer class, or its scheduler is
    not a flow-matching one.
    """
    import_diffusers()
    path = os.fspath(path_or_id)
    local = os.path.isdir(path)
    if not local and (os.path.exists(path) or _looks_like_local_path(path)):
        what = "is a file" if os.path.exists(path) else "does not exist"
        raise ValueError(
            f"model {path!r} {what}: pass a diffusers pipeline folder (model_index.json, transformer/, vae/, ...) "
            "or a Hub id such as black-forest-labs/FLUX.1-dev"
        )
    if local and not os.path.isdir(os.path.join(path, "transformer")):
        hint = (
            " It has a config.json of its own: it looks like a single model folder, not a pipeline."
            if os.path.isfile(os.path.join(path, "config.json"))
            else ""
        )
        raise ValueError(
            f"{path!r} has no 'transformer' subfolder, so it is not a diffusers transformer pipeline.{hint} "
            "Pass the pipeline folder (the one holding model_index.json and transformer/config.json)."
        )
    try:
        config = _config_reader().load_config(path, subfolder="transformer", local_files_only=local_files_only)
    except (OSError, ValueError) as err:
        offline = " (local_files_only=True: it must already be in the Hugging Face cache)" if local_files_only else ""
        raise ValueError(
            f"could not read transformer/config.json of {path!r}{offline}: {err}. Check the path or Hub id."
        ) from err
    found = config.get("_class_name")
    for cls in get_all_adapters().values():
        if cls.transformer_class_name == found:
            load_kw = {"local_files_only": local_files_only}
            cls._check_scheduler(path, "transformer", local, load_kw)
            return cls
    known = sorted(a.transformer_class_name for a in ADAPTERS.values())
    raise ValueError(
        f"{path!r} has a {found} transformer; scfm has adapters for {known} only "
        "(register one with scfm.models.adapters.register_adapter)"
    )


def load_pipeline(
    path_or_id: str | os.PathLike,
    torch_dtype: torch.dtype | None = None,
    local_files_only: bool = False,
    components: dict[str, Any] | None = None,
) -> tuple[Any, type[VelocityAdapter]]:
    """Load the diffusers pipeline at ``path_or_id`` and the adapter class for its transformer.

    Returns ``(pipe, adapter_cls)`` with ``pipe`` an instance of ``adapter_cls.pipeline_class_name``
    on the CPU (move it with ``pipe.to(device)``). ``components`` go to diffusers'
    ``from_pretrained`` as keyword arguments: already loaded modules (``{"transformer": t}``) or
    ``None`` for parts to skip. All checks of :func:`adapter_class_for` run before any weight
    is read; text encoders come back in eval mode.
    """
    adapter_cls = adapter_class_for(path_or_id, local_files_only)
    if not adapter_cls.pipeline_class_name:
        raise ValueError(f"adapter {adapter_cls.__name__} names no pipeline_class_name; it cannot load a pipeline")
    pipeline_cls = getattr(import_diffusers(), adapter_cls.pipeline_class_name)
    pipe = pipeline_cls.from_pretrained(
        os.fspath(path_or_id), local_files_only=local_files_only, **dtype_kwargs(torch_dtype), **(components or {})
    )
    for module in pipe.components.values():
        if isinstance(module, nn.Module):
            module.eval()
    return pipe, adapter_cls


def vae_normalize(vae: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Raw VAE latents -> the transformer's latents ``(z - shift_factor) * scaling_factor`` (float32)."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (z.float() - shift) * vae.config.scaling_factor


def vae_denormalize(vae: nn.Module, x0: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`vae_normalize`: ``x0 / scaling_factor + shift_factor`` (float32)."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return x0.float() / vae.config.scaling_factor + shift


@torch.no_grad()
def vae_encode_images(
    vae: nn.Module, images: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None = None
) -> torch.Tensor:
    """Images [B, 3, H, W] in [-1, 1] -> normalized latents [B, C, H/f, W/f] float32 (posterior sample or mode)."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W] in [-1, 1], got shape {tuple(images.shape)}")
    param = next(vae.parameters())
    dist = vae.encode(images.to(param.device, param.dtype)).latent_dist
    z = dist.sample(generator=generator) if generator is not None else dist.mode()
    return vae_normalize(vae, z)


@torch.no_grad()
def vae_decode_latents(vae: nn.Module, x0: torch.Tensor) -> torch.Tensor:
    """Normalized latents [B, C, h, w] -> images [B, 3, h*f, w*f] float32 in [0, 1]."""
    param = next(vae.parameters())
    image = vae.decode(vae_denormalize(vae, x0).to(param.device, param.dtype), return_dict=False)[0]
    return ((image.float() + 1) / 2).clamp(0, 1)
