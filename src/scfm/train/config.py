"""The distillation config: every knob of SCFM with the spec's default and a one-line doc.

:class:`DistillConfig` is composed of the lower layers' specs: ``plan`` (a
:class:`~scfm.objective.plans.PlanConfig`, the shortcut-plan knobs) and ``lora`` (a
:class:`~scfm.weights.lora.LoraSpec`). In dicts and YAML their fields are a nested section
(``lora: {rank: 8}``) or a dotted name (``lora.rank``); configs written before the sections
existed used flat names (``lora_rank``), which :data:`LEGACY_FIELDS` translates.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union, get_args, get_origin, get_type_hints

import torch

from scfm.objective.plans import PlanConfig
from scfm.objective.step_scale import StepScale
from scfm.weights.ema import EMA_STARTS
from scfm.weights.lora import LORA_INITS, LoraSpec
from scfm.weights.quantize import BASE_QUANTIZATIONS, check_quantization

FINAL_WEIGHTS = ("slow_ema", "fast_ema", "student")
MIXED_PRECISION = ("no", "bf16", "fp16")
NAN_POLICIES = ("stop", "skip")
LOGGERS = ("tensorboard", "wandb", "jsonl", "none")
CFG_MODES = ("runtime", "baked", "none")
MODEL_DTYPES = ("fp32", "bf16", "fp16")
DIFFUSERS_PREFIX = "diffusers:"
CACHE_PREFIX = "cache:"
LR_SCHEDULES = ("constant", "cosine", "linear")
OBJECTIVES = ("scfm", "lcm")
SELF_TARGETS = ("ema", "teacher")


@dataclass
class DistillConfig:
    """Defaults are the official Flux.1-dev settings (SCFM_SPEC.md) unless a preset says otherwise.

    They suit a large pretrained model and a LoRA of rank 64 or less. For a small model of your own
    (an MLP or a small DiT trained from scratch) use the README example's settings: the digits DiT
    preset's recipe, measured on a residual MLP on digits and the README's 2-D MLP (BENCHMARKS.md,
    "Defaults for a user's own model"): ``lr=1e-3`` with ``warmup_steps=20``, ``lr_schedule="cosine"``,
    ``grad_clip=1.0`` and ``max_steps`` in the thousands; a LoRA rank about half the layer width;
    ``plan=PlanConfig(teacher_ratio=0.2, self_grids=(2, 2, 4, 4, 4, 4, 8), shift_range=(1.0, 1.0),
    resolution_shift_prob=0.0)``; ``step_scale=StepScale(power=0.75, ref_steps=8)``; one EMA decay
    of 0.99 in both roles; ``calibrate=False`` (the paired-MSE table was worse than the trained strengths).
    """

    # optimisation
    max_steps: int = 1000
    """Optimizer steps."""
    lr: float = 2e-5
    """AdamW learning rate (constant after warm-up)."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up steps."""
    lr_schedule: str = "constant"
    """After warm-up: 'constant' (spec), 'cosine' or 'linear' decay to ``lr * lr_final_ratio`` at ``max_steps``."""
    lr_final_ratio: float = 0.0
    """Final learning rate as a fraction of ``lr`` for the decaying schedules, in [0, 1]."""
    weight_decay: float = 0.0
    """AdamW weight decay on the LoRA tensors."""
    optimizer: str = "adamw"
    """'adamw' (torch, fp32 moments) or 'adamw8bit' (bitsandbytes' blockwise 8-bit moments: 2 instead of 8 bytes
    per LoRA weight)."""
    grad_clip: float = 10.0
    """Gradient-norm clip (spec: 10 for Flux, 2 for SD3); 0 turns it off."""
    batch_size: int = 8
    """Batch size for data the package builds (built-in datasets, caches)."""
    # LoRA
    lora: LoraSpec = field(default_factory=LoraSpec)
    """Where and how big the LoRA is: ``targets`` (Linear-name suffixes, or one regex starting with '^'),
    ``rank`` 64, ``alpha`` 64, ``dropout`` 0, ``exclude``."""
    # shortcut plans
    objective: str = "scfm"
    """Training objective: 'scfm' (the method) or 'lcm' (latent consistency distillation, the
    benchmark baseline: times on the ``plan.teacher_min``-step grid, slow EMA as target network)."""
    plan: PlanConfig = field(default_factory=PlanConfig)
    """Shortcut-plan knobs with the spec's defaults: ``t_skip``, ``teacher_ratio``, ``teacher_min`` /
    ``teacher_max``, ``self_grids``, ``fm_ratio`` (official non_shortcut_ratio), ``shift_range``,
    ``resolution_shift_prob``."""
    self_targets: str = "ema"
    """Who composes the self branch's coarse jumps: 'ema' (the method: fast then slow EMA) or 'teacher' (an
    ablation: the frozen teacher on the same coarse grids, which is also the frozen initial student)."""
    step_scale: StepScale = field(default_factory=StepScale)
    """LoRA strength as a known function of the step count, trained in: ``(ref_steps / n) ** power`` for an
    n-step sampler (``power`` 0, the default, is the published method: one strength for every jump)."""
    # EMAs
    fast_decay: float = 0.99
    slow_decay: float = 0.999
    calibrate: bool = True
    """At the end of the run, choose the LoRA scale per step count on a held-out batch of the data stream
    (paired MSE to the teacher's many-step samples); stored with the result and used by sampling."""
    calibration_steps: tuple[int, ...] = (1, 2, 3, 4, 8)
    """Step counts the calibration chooses a LoRA scale for."""
    calibration_samples: int = 256
    """Rows of the held-out batch the calibration samples (at most the batch size)."""
    ema_init: str = "params"
    """Where both EMAs start: 'params' (the initial LoRA, a zero delta: the teacher) or 'zeros' (A and B
    at zero, as the official scripts start them)."""
    ema_restart_every: int = 0
    """Reset both EMAs to the student every K steps; 0 = never."""
    final_weights: str = "slow_ema"
    """Which LoRA the returned model carries: 'slow_ema', 'fast_ema' or 'student'."""
    # run
    seed: int = 0
    device: str = "auto"
    """'auto' (the teacher's device), 'cpu', 'cuda', 'cuda:1', ..."""
    mixed_precision: str = "no"
    """'no', 'bf16' or 'fp16' autocast for forward passes; LoRA master weights stay fp32."""
    target_precision: str = "same"
    """Autocast for the no-grad target passes: 'same' as mixed_precision, or 'no' / 'bf16' / 'fp16'
    (bf16 targets cut their cost on GPUs and AMX CPUs; the student pass keeps mixed_precision)."""
    log_every: int = 10
    """Steps between history records."""
    grad_accum: int = 1
    """Global batches accumulated per optimizer step."""
    nan_policy: str = "stop"
    """Non-finite loss: 'stop' (error, last checkpoint kept) or 'skip' (counted, step dropped)."""
    max_skipped_steps: int = 10
    """With nan_policy='skip', stop after this many skipped steps."""
    base_quantization: str = "none"
    """Store the frozen base's Linear weights as 'none' (the model's dtype), 'int8' (torchao, CPU and CUDA),
    'fp8' (torchao, CUDA compute capability >= 8.9) or 'nf4' (bitsandbytes, CUDA); LoRA stays fp32 on top
    and the teacher and EMA passes use the same quantized base. Exported LoRAs load on the unquantized model."""
    offload_ema: bool = False
    """Keep both EMAs in (pinned) CPU memory and copy each in for its pass: saves 2 fp32 copies of the LoRA on the
    GPU for 2 host-to-device copies and one device-to-host copy of the LoRA per step."""
    gradient_checkpointing: bool = False
    """Recompute activations in the student's backward (model must support it)."""
    flush_denormal: bool = True
    """CPU only: flush subnormal floats to zero (EMA LoRA products underflow into them and
    then run 2-10x slower). Sets torch.set_flush_denormal for the process."""
    compile: bool = False
    """torch.compile the model's forward (experimental)."""
    # run management (used by `scfm distill` and the engine)
    output_dir: str | None = None
    """Where the run writes config, checkpoints, logs and the final LoRA; None = nothing written."""
    checkpoint_every: int = 0
    """Steps between checkpoints; 0 = only at the end (and on Ctrl-C)."""
    keep_checkpoints: int = 3
    """Newest checkpoints kept; 0 keeps all."""
    logger: str = "tensorboard"
    """'tensorboard', 'wandb', 'jsonl' or 'none' (jsonl is always written when output_dir is set)."""
    validate_every: int = 0
    """Steps between validation grids in ``output_dir/validation/`` (and the logger); 0 = off. Diffusers teachers:
    teacher vs student at ``calibration_steps`` on the cache's validation prompts (``scfm generate-data
    --validation-prompts``); the VAE is then loaded, on the main process only."""
    teacher: str = "digits"
    """Teacher for `scfm distill`: 'digits' (shipped), 'toy2d:<name>' (shipped 2-D), a built-in model file,
    or 'diffusers:<pipeline folder or Hub id>' (Flux / SD3: only its transformer is loaded)."""
    data: str = "digits"
    """Data for `scfm distill`: 'digits', 'toy2d:<name>', or 'cache:<dir>' (a teacher cache from
    `scfm generate-data`)."""
    # diffusers teachers (teacher: diffusers:...)
    cfg_mode: str = "runtime"
    """True-CFG families (SD3): 'runtime' (official: CFG stays at inference), 'baked' (one-pass student) or 'none'."""
    cfg_scale: float = 3.5
    """True-CFG w in v_c + w (v_c - v_neg) (diffusers' SD3 pipeline guidance_scale = w + 1)."""
    guidance_min: float = 0.0
    guidance_max: float = 7.5
    """Guidance-distilled families (Flux.1-dev): per-sample embedded guidance ~ U[guidance_min, guidance_max]."""
    model_dtype: str = "fp32"
    """dtype of the frozen diffusers transformer weights: 'fp32', 'bf16' or 'fp16' (LoRA stays fp32)."""
    local_files_only: bool = False
    """Load diffusers models from local folders / the Hugging Face cache only (no download)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form fields kept with the run (presets, notes)."""

    def validate(self) -> DistillConfig:
        """Raise ``ValueError`` naming the field (dotted: ``lora.rank``), the bad value and the allowed range."""
        check_types(self)
        positive = ("max_steps", "batch_size", "log_every", "grad_accum", "calibration_samples")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        nonneg = (
            "warmup_steps",
            "ema_restart_every",
            "seed",
            "checkpoint_every",
            "keep_checkpoints",
            "validate_every",
            "max_skipped_steps",
        )
        for name in nonneg:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}={value!r} must be an integer >= 0")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr!r} must be > 0")
        for name in ("weight_decay", "grad_clip"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 0")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective={self.objective!r} must be one of {OBJECTIVES}")
        if self.self_targets not in SELF_TARGETS:
            raise ValueError(f"self_targets={self.self_targets!r} must be one of {SELF_TARGETS}")
        if self.step_scale.power != 0 and self.teacher.startswith(DIFFUSERS_PREFIX):
            raise ValueError(
                f"step_scale.power={self.step_scale.power} is for built-in and Python-API models so far; "
                "set step_scale.power: 0 for a diffusers teacher"
            )
        if self.objective == "lcm" and self.step_scale.power != 0:
            raise ValueError(
                f"step_scale.power={self.step_scale.power} needs objective: scfm (the lcm baseline has no jump sizes)"
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule={self.lr_schedule!r} must be one of {LR_SCHEDULES}")
        if not 0.0 <= self.lr_final_ratio <= 1.0:
            raise ValueError(f"lr_final_ratio={self.lr_final_ratio!r} must lie in [0, 1]")
        if not self.calibration_steps or min(self.calibration_steps) < 1:
            raise ValueError(f"calibration_steps={self.calibration_steps!r} must be step counts >= 1")
        if self.ema_init not in EMA_STARTS:
            raise ValueError(f"ema_init={self.ema_init!r} must be one of {EMA_STARTS}")
        for name in ("fast_decay", "slow_decay"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)!r} must lie in [0, 1)")
        if self.final_weights not in FINAL_WEIGHTS:
            raise ValueError(f"final_weights={self.final_weights!r} must be one of {FINAL_WEIGHTS}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision={self.mixed_precision!r} must be one of {MIXED_PRECISION}")
        if self.target_precision not in ("same", *MIXED_PRECISION):
            raise ValueError(f"target_precision={self.target_precision!r} must be 'same' or one of {MIXED_PRECISION}")
        if self.nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy={self.nan_policy!r} must be one of {NAN_POLICIES}")
        if self.logger not in LOGGERS:
            raise ValueError(f"logger={self.logger!r} must be one of {LOGGERS}")
        self._validate_memory()
        self._validate_lora()
        self._validate_diffusers()
        if not isinstance(self.plan, PlanConfig):
            raise ValueError(f"plan={self.plan!r} must be a PlanConfig (DistillConfig.from_dict takes a mapping)")
        self.plan.validate()
        if not isinstance(self.step_scale, StepScale):
            raise ValueError(f"step_scale={self.step_scale!r} must be a StepScale (from_dict takes a mapping)")
        self.step_scale.validate()
        return self

    def _validate_memory(self) -> None:
        """The memory savers' names (what the machine must have for them: :meth:`check_runnable`)."""
        from scfm.train.optimizers import OPTIMIZERS

        if self.base_quantization not in BASE_QUANTIZATIONS:
            raise ValueError(f"base_quantization={self.base_quantization!r} must be one of {BASE_QUANTIZATIONS}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r} must be one of {OPTIMIZERS}")

    def check_runnable(self, device: torch.device | str) -> None:
        """Raise ``ValueError`` (field, value, reason, fix) when this machine cannot train with these settings on
        ``device``: the quantization's library and device (fp8 and nf4 need CUDA), the optimizer's library.
        Training calls it before any weight loads; reading a finished run does not need it."""
        from scfm.train.optimizers import optimizer_problem

        check_quantization(self.base_quantization, device)
        problem = optimizer_problem(self.optimizer)
        if problem:
            raise ValueError(f"optimizer={self.optimizer!r}: {problem}")

    def _validate_lora(self) -> None:
        """The ``lora`` section: a positive integer rank, alpha > 0, dropout in [0, 1), at least one target."""
        lora = self.lora
        if not isinstance(lora, LoraSpec):
            raise ValueError(f"lora={lora!r} must be a LoraSpec (DistillConfig.from_dict takes a mapping)")
        if not isinstance(lora.rank, int) or isinstance(lora.rank, bool) or lora.rank < 1:
            raise ValueError(f"lora.rank={lora.rank!r} must be a positive integer")
        if not lora.alpha > 0:
            raise ValueError(f"lora.alpha={lora.alpha!r} must be > 0")
        if not 0.0 <= lora.dropout < 1.0:
            raise ValueError(f"lora.dropout={lora.dropout!r} must lie in [0, 1)")
        if lora.init not in LORA_INITS:
            raise ValueError(f"lora.init={lora.init!r} must be one of {LORA_INITS}")
        if isinstance(lora.targets, str):
            raise ValueError(f"lora.targets={lora.targets!r} must be a list of module-name suffixes, e.g. [qkv, proj]")
        if not lora.targets:
            raise ValueError("lora.targets=() is empty: name at least one Linear module suffix")

    def _validate_diffusers(self) -> None:
        """The diffusers-teacher fields and the teacher/data pairing."""
        if self.cfg_mode not in CFG_MODES:
            raise ValueError(f"cfg_mode={self.cfg_mode!r} must be one of {CFG_MODES}")
        if not self.cfg_scale >= 0:
            raise ValueError(f"cfg_scale={self.cfg_scale!r} must be >= 0 (0 = no guidance)")
        if not 0 <= self.guidance_min <= self.guidance_max:
            raise ValueError(
                f"guidance_min={self.guidance_min!r}, guidance_max={self.guidance_max!r}: "
                "need 0 <= guidance_min <= guidance_max"
            )
        if self.model_dtype not in MODEL_DTYPES:
            raise ValueError(f"model_dtype={self.model_dtype!r} must be one of {MODEL_DTYPES}")
        diffusers_teacher = self.teacher.startswith(DIFFUSERS_PREFIX)
        cache_data = self.data.startswith(CACHE_PREFIX)
        if diffusers_teacher and not self.teacher[len(DIFFUSERS_PREFIX) :].strip():
            raise ValueError(f"teacher={self.teacher!r} names no model: use diffusers:<pipeline folder or Hub id>")
        if cache_data and not self.data[len(CACHE_PREFIX) :].strip():
            raise ValueError(f"data={self.data!r} names no folder: use cache:<dir written by scfm generate-data>")
        if diffusers_teacher and not cache_data:
            raise ValueError(
                f"teacher={self.teacher!r} distills from a teacher cache: set data: cache:<dir> "
                f"(make one with scfm generate-data), not data={self.data!r}"
            )
        if cache_data and not diffusers_teacher:
            raise ValueError(
                f"data={self.data!r} is a diffusers teacher cache: "
                f"set teacher: diffusers:<the model the cache was made with>, not teacher={self.teacher!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The config as plain nested dicts (``{"plan": {...}, "lora": {...}, "lr": ...}``); from_dict inverts it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DistillConfig:
        """Build from ``values`` over the defaults: nested sections (``{"lora": {"rank": 8}}``, merged
        into the default section), dotted names (``{"lora.rank": 8}``) or legacy flat names
        (:data:`LEGACY_FIELDS`). YAML-friendly values are coerced to the field types: ints and
        strings such as ``"1e-4"`` for floats, lists for tuples, YAML booleans for text fields.
        Unknown names raise ``ValueError`` listing the valid ones."""
        flat = dotted_values(values)
        valid = field_names()
        unknown = sorted(set(flat) - set(valid))
        if unknown:
            sections = {name.split(".", 1)[0] for name in unknown if "." in name}
            if len(sections) == 1 and all("." in name for name in unknown):
                section = sections.pop()
                listed = [name for name in valid if name.startswith(section + ".")]
                raise ValueError(f"unknown config field(s) {unknown}; valid {section} fields: {listed}")
            raise ValueError(f"unknown config field(s) {unknown}; valid fields: {valid}")
        top = {name: value for name, value in flat.items() if "." not in name}
        built: dict[str, Any] = _coerced(cls, top, "")
        for section, spec_cls in SECTIONS.items():
            given = {name.split(".", 1)[1]: v for name, v in flat.items() if name.startswith(section + ".")}
            default = cls.__dataclass_fields__[section].default_factory()
            built[section] = dataclasses.replace(default, **_coerced(spec_cls, given, section + "."))
        return cls(**built)


SECTIONS: dict[str, type] = {"plan": PlanConfig, "lora": LoraSpec, "step_scale": StepScale}
"""The DistillConfig fields that are dataclasses of a lower layer; their fields are named ``section.field``."""

LEGACY_FIELDS: dict[str, str] = {
    "lora_targets": "lora.targets",
    "lora_rank": "lora.rank",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
    "t_skip": "plan.t_skip",
    "teacher_ratio": "plan.teacher_ratio",
    "teacher_min": "plan.teacher_min",
    "teacher_max": "plan.teacher_max",
    "self_grids": "plan.self_grids",
    "fm_ratio": "plan.fm_ratio",
    "shift_min": "plan.shift_range[0]",
    "shift_max": "plan.shift_range[1]",
    "resolution_shift_prob": "plan.resolution_shift_prob",
}
"""Flat names of configs (run folders, checkpoints) written before ``plan`` / ``lora`` -> dotted names;
``[i]`` names one item of a pair."""


def field_names() -> list[str]:
    """Every name :meth:`DistillConfig.from_dict` accepts besides the legacy ones, sorted (``lora.rank``, ``lr``)."""
    names = [f.name for f in dataclasses.fields(DistillConfig) if f.name not in SECTIONS]
    names += [f"{section}.{f.name}" for section, spec_cls in SECTIONS.items() for f in dataclasses.fields(spec_cls)]
    return sorted(names)


def dotted_values(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Config values as one flat dict keyed by dotted name (``{"lora.rank": 8}``); later layers win.

    A layer may give a section nested (``{"lora": {"rank": 8}}`` or a ``LoraSpec``), by dotted
    names, or by the legacy flat names of :data:`LEGACY_FIELDS`. Names are not checked here.
    """
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            key = str(key)
            if key in SECTIONS:
                out.update((f"{key}.{name}", item) for name, item in _section_items(key, value))
                continue
            key = LEGACY_FIELDS.get(key, key)
            if key.endswith("]"):  # one item of a pair, e.g. shift_min -> plan.shift_range[0]
                key, _, index = key[:-1].partition("[")
                section, name = key.split(".", 1)
                pair = list(out.get(key, getattr(DistillConfig.__dataclass_fields__[section].default_factory(), name)))
                pair[int(index)] = value
                value = tuple(pair)
            out[key] = value
    return out


def _section_items(section: str, value: Any) -> list[tuple[str, Any]]:
    """The (field, value) pairs of a nested section given as a mapping or as the section's dataclass."""
    if isinstance(value, SECTIONS[section]):
        return [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]
    if isinstance(value, Mapping):
        return [(str(name), item) for name, item in value.items()]
    raise ValueError(
        f"{section}={value!r} must be a mapping of {section} fields (for example {section}: {{...}}) "
        f"or dotted names such as {section}.{dataclasses.fields(SECTIONS[section])[0].name}"
    )


def _coerced(cls: type, values: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """``values`` (fields of dataclass ``cls``) converted to the field types by :func:`_coerce`."""
    hints = get_type_hints(cls)
    return {name: _coerce(prefix + name, hints[name], value) for name, value in values.items()}


def _coerce(name: str, hint: Any, value: Any) -> Any:
    """A YAML-friendly value as type ``hint``: ints and numeric strings for floats, lists for tuples
    (item by item), YAML 1.1 booleans (a bare no / off) for text; anything else unchanged."""
    if value is None:
        return None
    if get_origin(hint) in (Union, types.UnionType):
        options = [arg for arg in get_args(hint) if arg is not type(None)]
        return _coerce(name, options[0], value) if len(options) == 1 else value
    if hint is float:
        return _as_float(name, value)
    if hint is str and isinstance(value, bool):
        return "yes" if value else "no"
    if get_origin(hint) is tuple and isinstance(value, (list, tuple)):
        args = get_args(hint)
        items = args[:1] * len(value) if args[1:] == (Ellipsis,) else args
        return tuple(_coerce(f"{name}[{i}]", items[i] if i < len(items) else Any, v) for i, v in enumerate(value))
    return value


def check_types(config: DistillConfig) -> None:
    """Raise ``ValueError`` when a field's value is not of its declared type (sections included).

    bool fields take True/False only, int fields integers (not booleans), float fields finite
    numbers, str fields text, tuple fields tuples of their item type; ``None`` only where the
    field allows it. The message names the field (dotted), the value and the expected form.
    """
    for name, value, hint in _typed_fields(config):
        problem = _type_problem(hint, value)
        if problem:
            raise ValueError(f"{name}={value!r} must be {problem}")


def _typed_fields(config: DistillConfig) -> list[tuple[str, Any, Any]]:
    out = []
    for name, hint in get_type_hints(DistillConfig).items():
        value = getattr(config, name)
        if name in SECTIONS and isinstance(value, SECTIONS[name]):
            out += [(f"{name}.{sub}", getattr(value, sub), h) for sub, h in get_type_hints(SECTIONS[name]).items()]
        elif name not in SECTIONS:
            out.append((name, value, hint))
    return out


def _type_problem(hint: Any, value: Any) -> str | None:
    """What ``value`` should be for type ``hint`` (e.g. 'a finite number'), or None when it fits."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if value is None and len(options) < len(args):
            return None
        problems = [_type_problem(option, value) for option in options]
        return None if None in problems else " or ".join(filter(None, problems)) + (" or null" if value else "")
    if hint is bool:
        return None if isinstance(value, bool) else "true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else "a finite number"
    if hint is str:
        return None if isinstance(value, str) else "text"
    if origin is tuple:
        if not isinstance(value, tuple):
            return "a list"
        items = args[:1] * len(value) if args[1:] == (Ellipsis,) else args
        if len(items) != len(value):
            return f"a list of {len(items)} items"
        bad = [_type_problem(h, v) for h, v in zip(items, value)]
        return None if not any(bad) else f"a list of {next(b for b in bad if b)}s"
    if origin is dict:
        return None if isinstance(value, dict) else "a mapping"
    return None


def _as_float(name: str, value: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` as a string; accept it (and ints) for float fields."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{name}={value!r} is not a number") from None
    return value
