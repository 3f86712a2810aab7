"""Miniature REAL diffusers pipelines trained on 8x8 digits: ``flux-digits`` and ``sd3-digits``.

Each is a complete ``FluxPipeline`` / ``StableDiffusion3Pipeline`` folder (shipped under
``scfm/assets/<name>/``, found with :func:`shipped_pipeline_path`) that loads offline::

    from diffusers import FluxPipeline
    pipe = FluxPipeline.from_pretrained(shipped_pipeline_path("flux-digits"), local_files_only=True)
    images = pipe(prompt=digits_prompt(7), height=8, width=8, num_inference_steps=32, output_type="pt").images
    digits = rgb_to_digits(images)            # [B, 1, 8, 8] in [-1, 1], what DigitsEvaluator scores

(``StableDiffusion3Pipeline`` defaults to 8x8 already: its transformer's ``sample_size`` is 4.)

The parts, all real diffusers / transformers classes at toy size:

- VAE: an ``AutoencoderKL`` with one downsampling (vae scale factor 2) and 4 latent channels,
  trained on the digits replicated to 3 channels in [-1, 1]: latents [B, 4, 4, 4]. Four channels
  suffice for Flux: its 2x2 packing makes 2 x 2 = 4 image tokens of 16 channels
  (``in_channels`` 16). ``shift_factor`` / ``scaling_factor`` come from the trained latents'
  statistics, so the transformers see zero-mean, unit-variance latents. Both pipelines share it.
  With the KL weight 1e-3 two of the four channels carry the digit (posterior std ~0.03) and two
  collapse to the prior (N(0, 1) noise the decoder ignores).
- Text: the prompts of :func:`digits_prompt` (3 paraphrases per digit, :data:`PROMPT_TEMPLATES`)
  plus the empty prompt. The tokenizers are written from local files (the byte-level CLIP BPE
  and the character-level T5 Unigram of :mod:`scfm.models.tiny`) with every prompt word added as
  a whole token (:data:`PROMPT_WORDS`), so each prompt is a short sequence of word ids. The text
  encoders (CLIP width 32, T5 width 64, 2 layers each) stay frozen at random init. The T5
  encoder's relative position bias is zero, so it is permutation-equivariant and every padding
  position gets the same embedding; see "Compressed text" below.
- Transformers: ``FluxTransformer2DModel`` with guidance embedding (2 double + 2 single blocks,
  width 128) and ``SD3Transformer2DModel`` (4 joint blocks, width 128, patch 2), trained by flow
  matching on the VAE latents (``scfm pretrain --model flux-digits | sd3-digits``): logit-normal
  times, 10% of the prompts dropped to "" (so true CFG / ``true_cfg_scale`` works), and for Flux
  an embedded guidance value drawn from :data:`GUIDANCE_RANGE` that carries no information.
- Schedulers: ``FlowMatchEulerDiscreteScheduler`` configured as the family's (see
  :data:`FLUX_SCHEDULER` and :data:`SD3_SCHEDULER`).

Compressed text. The pipelines pad T5 to 512 (Flux) or 256 (SD3) tokens, ~19x dearer per
transformer call than the 4 image tokens warrant. The padding embeddings here are identical, so
:mod:`scfm.models.counted_text` cuts them to one counted token, exactly: the Flux and SD3
adapters do it for every cache batch, teacher sample and pipeline sample (``text_log_count``),
and training here runs on the cut table with :meth:`MiniatureParts.attention`.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scfm.models.adapters import VelocityAdapter
from scfm.models.counted_text import compress_text, counted_attention
from scfm.models.tiny import bytes_to_unicode, clip_text_encoder, t5_text_encoder, t5_vocab

MINIATURE_MODELS = ("flux-digits", "sd3-digits")
"""Names of the miniature pipelines (folders under ``scfm/assets/``)."""
IMAGE_SIZE = 8
"""Pixel side of the miniature pipelines' images (the sklearn digits)."""
LATENT_CHANNELS = 4
"""Latent channels of the miniature VAE (latents [B, 4, 4, 4])."""
CLIP_WIDTH = 32
"""Hidden and projection width of the CLIP text encoders."""
CLIP_MAX_LENGTH = 8
"""Token length of the CLIP tokenizers (the longest prompt is 6 tokens with its start and end tokens). SD3 puts
all of them in the transformer's text sequence, so it is kept short."""
T5_WIDTH = 64
"""d_model of the T5 text encoders (SD3 pads the two CLIP widths, 2 x 32, to it)."""

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PROMPT_TEMPLATES = (
    "a handwritten digit {word}",
    "the number {word}",
    "the digit {numeral}",
)
"""Paraphrases of a digit prompt; ``{word}`` is the digit's name, ``{numeral}`` its figure. Variant 0 is the
canonical prompt ("a handwritten digit seven")."""
NEGATIVE_PROMPT = ""
"""The prompt of the 10% of training rows whose text is dropped (and the pipelines' default negative prompt)."""
PROMPT_WORDS = tuple(
    dict.fromkeys(
        [w.strip(",") for t in PROMPT_TEMPLATES for w in t.split() if "{" not in w and w.strip(",")] + list(DIGIT_WORDS)
    )
)
"""Every word of the prompts; each is a single token of both tokenizers."""

VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    block_out_channels=(32, 32),
    layers_per_block=1,
    latent_channels=LATENT_CHANNELS,
    norm_num_groups=8,
    sample_size=IMAGE_SIZE,
)
"""``AutoencoderKL`` config of the miniature VAE (one downsampling: 8x8 pixels -> 4x4 latents)."""

FLUX_TRANSFORMER: dict[str, Any] = dict(
    patch_size=1,
    in_channels=4 * LATENT_CHANNELS,
    num_layers=2,
    num_single_layers=2,
    attention_head_dim=32,
    num_attention_heads=4,
    joint_attention_dim=T5_WIDTH,
    pooled_projection_dim=CLIP_WIDTH,
    guidance_embeds=True,
    axes_dims_rope=(8, 12, 12),
)
"""``FluxTransformer2DModel`` config: guidance-distilled layout like FLUX.1-dev, width 128."""

SD3_TRANSFORMER: dict[str, Any] = dict(
    sample_size=IMAGE_SIZE // 2,
    patch_size=2,
    in_channels=LATENT_CHANNELS,
    out_channels=LATENT_CHANNELS,
    num_layers=4,
    attention_head_dim=32,
    num_attention_heads=4,
    caption_projection_dim=128,
    joint_attention_dim=T5_WIDTH,
    pooled_projection_dim=2 * CLIP_WIDTH,
    pos_embed_max_size=8,
)
"""``SD3Transformer2DModel`` config: 4 joint blocks of width 128, patch 2 (4 image tokens at 8x8 pixels)."""

FLUX_SCHEDULER: dict[str, Any] = dict(
    num_train_timesteps=1000,
    shift=1.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=4,
    max_image_seq_len=64,
)
"""Flux's resolution ("dynamic") shift, with the sequence lengths of this model: mu = ``base_shift`` at 8x8
pixels (4 image tokens), ``max_shift`` at 32x32 (64 tokens); the sampling shift is exp(mu)."""

SD3_SCHEDULER: dict[str, Any] = dict(num_train_timesteps=1000, shift=3.0)
"""SD3's fixed shift 3.0."""

GUIDANCE_RANGE = (0.0, 8.0)
"""Flux's embedded guidance value is drawn per training row from U[0, 8] (covering the U[0, 7.5] that SCFM
distillation draws). No guidance teacher exists, so the value carries no information and the model learns to
ignore it; prompt dropout makes the pipeline's ``true_cfg_scale`` (negative-prompt CFG) meaningful instead."""


# ----------------------------------------------------------------------------------------- prompts


def digits_prompt(label: int, variant: int = 0) -> str:
    """The prompt of digit ``label`` (0..9) in paraphrase ``variant`` (0..2; 0 is "a handwritten digit seven")."""
    if not 0 <= int(label) <= 9:
        raise ValueError(f"label={label} is not a digit 0..9")
    if not 0 <= variant < len(PROMPT_TEMPLATES):
        raise ValueError(f"variant={variant} must lie in 0..{len(PROMPT_TEMPLATES) - 1}")
    return PROMPT_TEMPLATES[variant].format(word=DIGIT_WORDS[int(label)], numeral=int(label))


def training_prompts() -> tuple[list[str], torch.Tensor]:
    """Every training prompt and its label [P] int64: the 30 digit prompts (label-major), then the empty
    prompt with label -1."""
    prompts = [digits_prompt(d, v) for d in range(10) for v in range(len(PROMPT_TEMPLATES))]
    labels = [d for d in range(10) for _ in PROMPT_TEMPLATES]
    return prompts + [NEGATIVE_PROMPT], torch.tensor(labels + [-1])


# ----------------------------------------------------------------------------------------- tokenizers


def write_clip_tokenizer(directory: str | Path, words: tuple[str, ...] = PROMPT_WORDS) -> Path:
    """Write :func:`scfm.models.tiny.write_tiny_clip_tokenizer`'s byte-level CLIP BPE with every word of ``words``
    added as one token (a chain of merges per word), ``model_max_length`` :data:`CLIP_MAX_LENGTH`; return the
    folder."""
    from transformers import CLIPTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in bytes_to_unicode().values():
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in sorted(set(words), key=lambda w: (-len(w), w)):
        symbols = [*word[:-1], word[-1] + "</w>"]
        current = symbols[0]
        for symbol in symbols[1:]:
            if (current, symbol) not in merges:
                merges.append((current, symbol))
            current += symbol
            vocab.setdefault(current, len(vocab))
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tok = CLIPTokenizer(
        vocab=str(directory / "vocab.json"), merges=str(directory / "merges.txt"), model_max_length=CLIP_MAX_LENGTH
    )
    tok.save_pretrained(directory)
    return directory


def write_t5_tokenizer(directory: str | Path, words: tuple[str, ...] = PROMPT_WORDS) -> Path:
    """Write :func:`scfm.models.tiny.write_tiny_t5_tokenizer`'s Unigram T5 tokenizer with a piece ``'▁word'`` of
    higher score for every word of ``words``; return the folder."""
    from transformers import T5Tokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    base = t5_vocab()
    known = {piece for piece, _ in base}
    pieces = base + [("▁" + w, -1.0) for w in words if "▁" + w not in known]
    T5Tokenizer(vocab=pieces, extra_ids=0).save_pretrained(directory)
    return directory


# ----------------------------------------------------------------------------------------- components


def build_vae(seed: int = 0, shift_factor: float = 0.0, scaling_factor: float = 1.0) -> nn.Module:
    """A fresh (random) miniature ``AutoencoderKL`` (:data:`VAE_CONFIG`), weights from ``torch.manual_seed(seed)``."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**VAE_CONFIG, shift_factor=shift_factor, scaling_factor=scaling_factor)


def digits_rgb(images: torch.Tensor) -> torch.Tensor:
    """Digits [N, 1, 8, 8] in [-1, 1] -> the VAE's input [N, 3, 8, 8] (gray replicated to 3 channels)."""
    return images.expand(-1, 3, -1, -1).contiguous()


def rgb_to_digits(images: torch.Tensor, value_range: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """Pipeline images [N, 3, 8, 8] (``output_type="pt"``: in [0, 1]) -> gray digits [N, 1, 8, 8] in [-1, 1]."""
    lo, hi = value_range
    gray = images.float().mean(dim=1, keepdim=True)
    return ((gray - lo) / (hi - lo) * 2.0 - 1.0).clamp(-1.0, 1.0)


def _clip_encoder(cls_name: str, vocab_size: int, seed: int) -> nn.Module:
    """A frozen random CLIP text encoder of width :data:`CLIP_WIDTH` for the digits tokenizer."""
    encoder = clip_text_encoder(
        cls_name, seed, vocab_size, width=CLIP_WIDTH, intermediate=2 * CLIP_WIDTH, max_length=CLIP_MAX_LENGTH
    )
    return encoder.requires_grad_(False)


def _t5_encoder(vocab_size: int, seed: int) -> nn.Module:
    """A frozen random 2-layer T5 encoder of width :data:`T5_WIDTH` without position bias (identical padding)."""
    return t5_text_encoder(seed, T5_WIDTH, 2, vocab_size, d_kv=16, position_bias=False).requires_grad_(False)


def _scheduler(name: str):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**(FLUX_SCHEDULER if name == "flux-digits" else SD3_SCHEDULER))


def _check_name(name: str) -> None:
    if name not in MINIATURE_MODELS:
        raise ValueError(f"no miniature pipeline named {name!r}; choose one of {MINIATURE_MODELS}")


def build_pipeline(name: str, vae: nn.Module, seed: int = 0) -> Any:
    """A fresh ``FluxPipeline`` (``"flux-digits"``) or ``StableDiffusion3Pipeline`` (``"sd3-digits"``) around
    ``vae``: random transformer, frozen random text encoders, tokenizers written from local files."""
    from diffusers import (
        FluxPipeline,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTokenizer, T5TokenizerFast

    _check_name(name)
    with tempfile.TemporaryDirectory() as tmp:
        clip_tok = CLIPTokenizer.from_pretrained(write_clip_tokenizer(Path(tmp) / "clip"))
        t5_tok = T5TokenizerFast.from_pretrained(write_t5_tokenizer(Path(tmp) / "t5"))
    clip_vocab, t5_vocab_size = len(clip_tok), len(t5_tok)
    vae = vae.eval().requires_grad_(False)
    if name == "flux-digits":
        torch.manual_seed(seed)
        return FluxPipeline(
            scheduler=_scheduler(name),
            vae=vae,
            text_encoder=_clip_encoder("CLIPTextModel", clip_vocab, seed + 1),
            tokenizer=clip_tok,
            text_encoder_2=_t5_encoder(t5_vocab_size, seed + 2),
            tokenizer_2=t5_tok,
            transformer=_seeded(FluxTransformer2DModel, FLUX_TRANSFORMER, seed),
        )
    return StableDiffusion3Pipeline(
        transformer=_seeded(SD3Transformer2DModel, SD3_TRANSFORMER, seed),
        scheduler=_scheduler(name),
        vae=vae,
        text_encoder=_clip_encoder("CLIPTextModelWithProjection", clip_vocab, seed + 1),
        tokenizer=clip_tok,
        text_encoder_2=_clip_encoder("CLIPTextModelWithProjection", clip_vocab, seed + 2),
        tokenizer_2=clip_tok,
        text_encoder_3=_t5_encoder(t5_vocab_size, seed + 3),
        tokenizer_3=t5_tok,
    )


def _seeded(cls: type, config: dict[str, Any], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return cls(**config)


# ----------------------------------------------------------------------------------------- training parts


@dataclass
class MiniatureParts:
    """What the training job needs for one miniature pipeline; nothing in it names a family to its user.

    pipeline: the assembled diffusers pipeline (its transformer is the one trained).
    velocity: the scfm adapter around ``pipeline.transformer`` (unguided), ``v = velocity(x, t, **cond)``.
    prompts / labels: the training prompts and their digits [P] (-1: the empty prompt).
    cond: compressed prompt embeddings, one row per prompt ([P, ...] per cond key).
    text_log_count: the log-multiplicities of the compressed text tokens; train inside
        ``counted_attention(velocity.transformer, text_log_count)`` (:meth:`attention`).
    extra_cond: per-row inputs that are not text, drawn per batch: ``extra_cond(batch_size, generator)``.
    time_shift: the fixed shift s (``t -> s t / (1 + (s - 1) t)``) training applies to its logit-normal times
        (:func:`training_shift`).
    """

    name: str
    pipeline: Any
    velocity: VelocityAdapter
    prompts: list[str]
    labels: torch.Tensor
    cond: dict[str, torch.Tensor]
    text_log_count: torch.Tensor
    extra_cond: Callable[[int, torch.Generator], dict[str, torch.Tensor]] | None
    time_shift: float
    info: dict[str, Any] = field(default_factory=dict)

    def attention(self):
        """Context in which ``velocity`` computes on the compressed text exactly what it would on the full one."""
        return counted_attention(self.velocity.transformer, self.text_log_count)


def training_shift(name: str) -> float:
    """The shift of the training times: 1 (none) for both families, the unshifted logit-normal of the SD3 paper
    ("lognorm(0, 1)") and of diffusers' Flux / SD3 training scripts; the shift is applied at sampling only (the
    shipped schedulers). Measured on sd3-digits (4000 steps, FD at 32 steps): trained at the sampling shift 3.0,
    2.44; unshifted, 1.25 (a shift of 3 leaves few training times below 0.25, where the details are drawn)."""
    _check_name(name)
    return 1.0


def sampling_shift(name: str) -> float:
    """The shift s at which the shipped scheduler samples 8x8 images: exp(base_shift) for Flux (4 image tokens at
    ``base_image_seq_len``), ``shift`` for SD3."""
    _check_name(name)
    return math.exp(FLUX_SCHEDULER["base_shift"]) if name == "flux-digits" else float(SD3_SCHEDULER["shift"])


def _draw_flux_guidance(batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    from scfm.models.flux import draw_guidance

    return {"guidance": draw_guidance(batch_size, generator, *GUIDANCE_RANGE)}


@torch.no_grad()
def training_parts(name: str, vae: nn.Module, seed: int = 0) -> MiniatureParts:
    """Build ``name``'s pipeline around the trained ``vae`` and everything its training needs: the adapter, the
    compressed embeddings of :func:`training_prompts` (through the pipeline's own ``encode_prompt``) and the
    family's extra inputs."""
    from scfm.models.flux import FluxAdapter
    from scfm.models.sd3 import SD3Adapter

    pipe = build_pipeline(name, vae, seed)
    prompts, labels = training_prompts()
    if name == "flux-digits":
        velocity: VelocityAdapter = FluxAdapter(pipe.transformer)
        cond = FluxAdapter.encode_prompts(pipe, prompts, "cpu")
        extra = _draw_flux_guidance
    else:
        velocity = SD3Adapter(pipe.transformer, cfg_mode="none")
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, device="cpu", do_classifier_free_guidance=False
        )
        cond = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
        extra = None
    full_len = cond["prompt_embeds"].shape[1]
    cond["prompt_embeds"], log_count = compress_text(cond["prompt_embeds"].float())
    cond = {k: v.float() for k, v in cond.items()}
    info = {"text_tokens": full_len, "compressed_text_tokens": int(log_count.shape[0]), "prompts": prompts}
    return MiniatureParts(name, pipe, velocity, prompts, labels, cond, log_count, extra, training_shift(name), info)


def save_pipeline(pipeline: Any, out: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """``save_pretrained`` the pipeline (fp32 safetensors) to ``out`` and write ``meta`` to
    ``out/scfm_training.json``; return ``out``."""
    out = Path(out)
    pipeline.save_pretrained(out, safe_serialization=True)
    if meta is not None:
        (out / TRAINING_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out


TRAINING_FILE = "scfm_training.json"
"""The record (command, wall time, settings, measured quality) written next to a trained folder's config."""


def shipped_pipeline_path(name: str) -> Path:
    """The folder of the shipped miniature pipeline ``name`` (``"flux-digits"`` or ``"sd3-digits"``)."""
    _check_name(name)
    path = Path(str(resources.files("scfm") / "assets" / name))
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the miniature pipeline {name!r} is not installed at {path}; "
            f"train it with: scfm pretrain --model {name} --out {path}"
        )
    return path


# ----------------------------------------------------------------------------------------- sampling


@torch.no_grad()
def pipeline_digits(
    pipe: Any,
    labels: torch.Tensor,
    steps: int,
    guidance: float | None = None,
    generator: torch.Generator | None = None,
    compressed: bool = True,
    variant: int = 0,
) -> torch.Tensor:
    """Sample digits ``labels`` [N] with the pipeline's own call (its scheduler, transformer and VAE) at
    ``steps`` inference steps; return gray digits [N, 1, 8, 8] in [-1, 1].

    ``guidance`` is scfm's convention for the family (Flux: the embedded value, default 3.5; SD3: w in
    ``v_c + w (v_c - v_neg)``, default 0 = no CFG). Prompts are :func:`digits_prompt` (label, ``variant``),
    encoded by the pipeline's ``encode_prompt`` and passed as embeddings; with ``compressed`` the text is
    cut (:mod:`scfm.models.counted_text`: the same result as the full-length text, to float rounding, ~19x
    faster), else ``pipe(prompt=...)`` runs as a user would call it.
    """
    from scfm.models.adapters import adapter_for_pipeline

    adapter_cls = adapter_for_pipeline(pipe)
    if guidance is None:
        guidance = 0.0 if adapter_cls.true_cfg else adapter_cls.default_guidance
    prompts = [digits_prompt(int(d), variant) for d in labels]
    call = dict(
        height=IMAGE_SIZE,
        width=IMAGE_SIZE,
        num_inference_steps=steps,
        guidance_scale=adapter_cls.pipeline_guidance_scale(guidance),
        generator=generator,
        output_type="pt",
    )
    if not compressed:
        return rgb_to_digits(pipe(prompt=prompts, **call).images)
    with adapter_cls.pipeline_prompt_kwargs(pipe, prompts, pipe._execution_device) as text:
        return rgb_to_digits(pipe(**text, **call).images)


# ----------------------------------------------------------------------------------------- demo settings

DEMO_TEACHER_GUIDANCE = {"flux-digits": 3.5, "sd3-digits": 0.5}
"""Teacher guidance of ``scfm demo --model NAME`` in scfm's convention. Flux: the embedded value (the pipeline
default; this model learned to ignore it). SD3: CFG w (pipeline guidance_scale w + 1). CFG raises this teacher's
FD (32 steps, ``bench/miniature_quality.py``, noise seed 999, not the demo's: w 0 1.25, w 0.5 2.22, w 3.5 6.47;
class accuracy 0.997 -> 1.000), so the demo guides gently: runtime CFG is exercised at a cost FD can show."""

DEMO_SCALED_DOWN: dict[str, Any] = {
    "max_steps": 1500,
    "batch_size": 64,
    "lr": 5e-4,
    "warmup_steps": 20,
    "lr_schedule": "cosine",
    "lora.rank": 32,
    "lora.alpha": 32.0,
    "fast_decay": 0.95,
    "slow_decay": 0.99,
    "log_every": 10,
}
"""What ``scfm demo --model NAME`` changes in the family's preset (:attr:`VelocityAdapter.recommended_config` over
the spec's defaults) to train in minutes on 2 CPU cores: the step count, batch and rates (flux-digits: 4-step
FD 2.63 after 1500 steps, 2.88 after 400). The EMA horizons are shortened from the official 0.99 / 0.999 (runs
of thousands of steps at lr 2e-5) to 0.95 / 0.99 for a 1500-step run at lr 5e-4. The algorithm, the targets,
the shift distribution and the guidance handling stay the family's."""


CFG_DEMO_STEPS = 700
"""Distillation steps of the true-CFG demos: guided targets double every no-grad pass, so 1500 steps took 508 s
(sd3-digits, runtime CFG: whole demo 739 s, over the 10-minute budget; 4-step FD 2.21 against the teacher's 2.62
at 32 steps)."""


def demo_config(name: str, cfg_mode: str | None = None) -> dict[str, Any]:
    """Dotted :class:`~scfm.train.config.DistillConfig` fields of ``scfm demo --model name``: the family's
    preset, :data:`DEMO_SCALED_DOWN`, and for true-CFG families ``cfg_mode`` (default "runtime") at the demo's
    teacher guidance."""
    from scfm.models.adapters import get_adapter

    _check_name(name)
    adapter_cls = get_adapter(name.split("-")[0])
    fields = {**adapter_cls.recommended_config, **DEMO_SCALED_DOWN}
    if adapter_cls.true_cfg:
        fields.update(cfg_mode=cfg_mode or "runtime", cfg_scale=DEMO_TEACHER_GUIDANCE[name], max_steps=CFG_DEMO_STEPS)
    elif cfg_mode not in (None, "none"):
        raise ValueError(f"cfg_mode={cfg_mode!r}: {name} guides by an embedded value, not CFG; leave cfg_mode unset")
    return fields
