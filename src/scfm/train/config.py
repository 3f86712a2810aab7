"""The distillation config: every knob of SCFM with the spec's default and a one-line doc."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from scfm.objective.plans import PlanConfig
from scfm.weights.lora import LoraSpec

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


@dataclass
class DistillConfig:
    """Defaults are the official Flux.1-dev settings (SCFM_SPEC.md) unless a preset says otherwise."""

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
    grad_clip: float = 10.0
    """Gradient-norm clip (spec: 10 for Flux, 2 for SD3); 0 turns it off."""
    batch_size: int = 8
    """Batch size for data the package builds (built-in datasets, caches)."""
    # LoRA
    lora_rank: int = 64
    lora_alpha: float = 64.0
    lora_targets: tuple[str, ...] = ("qkv", "proj", "fc1", "fc2", "adaLN")
    """Module-name suffixes of the Linear layers that get a LoRA (or one regex starting with '^')."""
    lora_dropout: float = 0.0
    # shortcut plans
    objective: str = "scfm"
    """Training objective: 'scfm' (the method) or 'lcm' (latent consistency distillation, the
    benchmark baseline: times on the ``teacher_min``-step grid, slow EMA as target network)."""
    t_skip: int = 2
    """Sub-steps per shortcut jump (even)."""
    teacher_ratio: float = 0.4
    """Probability of the teacher branch for a shortcut sample (paper's k/N)."""
    teacher_min: int = 32
    teacher_max: int = 32
    """Teacher fine-grid size range (steps of t_skip)."""
    self_grids: tuple[int, ...] | None = None
    """Self-branch coarse grids; None = powers of two from t_skip below teacher_min."""
    fm_ratio: float = 0.0
    """Fraction of each batch trained with the plain flow-matching target (official non_shortcut_ratio)."""
    shift_min: float = 2.5
    shift_max: float = 4.5
    """Fixed training shift s ~ U[shift_min, shift_max]; 1, 1 means no shift."""
    resolution_shift_prob: float = 0.1
    """Probability of the resolution shift (needs a token count from the adapter)."""
    # EMAs
    fast_decay: float = 0.99
    slow_decay: float = 0.999
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
    """Steps between validation grids (built-in models); 0 = off."""
    teacher: str = "digits"
    """Teacher for `scfm distill`: 'digits' (shipped), 'toy2d:<name>' (shipped 2-D), a built-in model file,
    or 'diffusers:<pipeline folder or Hub id>' (Flux / SD3: only its transformer is loaded)."""
    data: str = "digits"
    """Data for `scfm distill`: 'digits', 'toy2d:<name>', or 'cache:<dir>' (a teacher cache from `scfm generate-data`)."""
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

    def plan_config(self) -> PlanConfig:
        return PlanConfig(
            t_skip=self.t_skip,
            teacher_ratio=self.teacher_ratio,
            teacher_min=self.teacher_min,
            teacher_max=self.teacher_max,
            self_grids=tuple(self.self_grids) if self.self_grids is not None else None,
            fm_ratio=self.fm_ratio,
            shift_range=(self.shift_min, self.shift_max),
            resolution_shift_prob=self.resolution_shift_prob,
        )

    def lora_spec(self) -> LoraSpec:
        return LoraSpec(
            targets=tuple(self.lora_targets), rank=self.lora_rank, alpha=self.lora_alpha, dropout=self.lora_dropout
        )

    def validate(self) -> DistillConfig:
        """Raise ``ValueError`` naming the field, the bad value and the allowed range."""
        positive = ("max_steps", "batch_size", "lora_rank", "log_every", "grad_accum")
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
        for name in ("lr", "lora_alpha"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be > 0")
        for name in ("weight_decay", "grad_clip"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 0")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective={self.objective!r} must be one of {OBJECTIVES}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule={self.lr_schedule!r} must be one of {LR_SCHEDULES}")
        if not 0.0 <= self.lr_final_ratio <= 1.0:
            raise ValueError(f"lr_final_ratio={self.lr_final_ratio!r} must lie in [0, 1]")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout={self.lora_dropout!r} must lie in [0, 1)")
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
        if not self.lora_targets:
            raise ValueError("lora_targets=() is empty: name at least one Linear module suffix")
        self._validate_diffusers()
        self.plan_config().validate()
        return self

    def _validate_diffusers(self) -> None:
        """The diffusers-teacher fields and the teacher/data pairing."""
        if self.cfg_mode not in CFG_MODES:
            raise ValueError(f"cfg_mode={self.cfg_mode!r} must be one of {CFG_MODES}")
        if not self.cfg_scale >= 0:
            raise ValueError(f"cfg_scale={self.cfg_scale!r} must be >= 0 (0 = no guidance)")
        if not 0 <= self.guidance_min <= self.guidance_max:
            raise ValueError(
                f"guidance_min={self.guidance_min!r}, guidance_max={self.guidance_max!r}: need 0 <= guidance_min <= guidance_max"
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
                f"teacher={self.teacher!r} distills from a teacher cache: set data: cache:<dir> (make one with scfm generate-data), not data={self.data!r}"
            )
        if cache_data and not diffusers_teacher:
            raise ValueError(
                f"data={self.data!r} is a diffusers teacher cache: set teacher: diffusers:<the model the cache was made with>, not teacher={self.teacher!r}"
            )
        if diffusers_teacher and self.validate_every:
            raise ValueError(
                f"validate_every={self.validate_every} works for built-in models only; set it to 0 for a diffusers teacher and look at checkpoints with scfm sample"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DistillConfig:
        """Build from a dict; unknown keys raise ``ValueError`` listing the valid ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}; valid fields: {sorted(names)}")
        values = dict(values)
        for f in dataclasses.fields(cls):
            if f.name in values and isinstance(f.default, float) and not isinstance(f.default, bool):
                values[f.name] = _as_float(f.name, values[f.name])
            if f.name in values and isinstance(f.default, str) and isinstance(values[f.name], bool):
                values[f.name] = "yes" if values[f.name] else "no"  # YAML 1.1 reads a bare no / off as false
        for key in ("lora_targets", "self_grids"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        return cls(**values)


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
