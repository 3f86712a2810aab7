"""Small diffusers pipelines and transformers built from explicit configs with random weights and tokenizers
written from local files: for tests, benchmarks and the miniature pipelines; no download.

Pipelines are saved to a folder and load offline::

    from scfm.models.tiny import build_tiny_flux_pipeline
    flux_dir = build_tiny_flux_pipeline(tmp_path)      # tmp_path / "tiny-flux"
    pipe = FluxPipeline.from_pretrained(flux_dir, local_files_only=True)

Every component is real diffusers / transformers code at toy size: a Flux, SD3 or Wan
transformer (1-2 blocks), an ``AutoencoderKL`` with 2 blocks (vae scale factor 2, 4 latent
channels), CLIP text encoders with a byte-level BPE tokenizer written to disk
(:func:`write_tiny_clip_tokenizer`), a T5 encoder with a Unigram tokenizer from a list of
(piece, score) pairs (:func:`write_tiny_t5_tokenizer`) and a ``FlowMatchEulerDiscreteScheduler``
configured as the real model's. Images must be multiples of 4 pixels (Flux: vae scale 2 x 2x2
packing; SD3: vae scale 2 x patch 2); e.g. 32x32 gives 16x16 latents.

``t5_width`` / ``t5_layers`` scale the T5 encoder (bench/cache_memory.py makes it a few
hundred MB); the defaults keep a build-and-save under a second.

:func:`build_tiny_flux_adapter` and :func:`tiny_flux_batches` are a bigger Flux transformer
(2 double + 2 single blocks, width 128) wrapped in its adapter, and random training batches
for it, with no pipeline around it: what the cost benchmarks time.

diffusers and transformers are imported inside the builders, so importing this module needs
neither.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from scfm.models.flux import FluxAdapter

LATENT_CHANNELS = 4
"""Latent channels C of the tiny VAEs (Flux.1 / SD3 use 16)."""
VAE_SCALE = 2
"""Pixel-to-latent downsampling of the tiny VAEs (real models: 8)."""
CLIP_WIDTH = 32
"""Hidden and projection width of the tiny CLIP text encoders (pooled embeddings: [B, 32] each)."""
CLIP_MAX_LENGTH = 77
"""Token length of the tiny CLIP tokenizer, as the real one."""
T5_WIDTH = 32
"""Default d_model of the tiny T5 / UMT5 text encoders (text embeddings [B, L, 32])."""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-level alphabet: every byte to a printable unicode character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_tiny_clip_tokenizer(directory: str | Path) -> Path:
    """Write a byte-level CLIP tokenizer (every byte, alone and word-final, no merges) and return its folder.

    The folder holds ``vocab.json``, ``merges.txt`` and the tokenizer config (``model_max_length``
    77); load it with ``CLIPTokenizer.from_pretrained(folder)``. Ids: ``<|startoftext|>`` = 0,
    ``<|endoftext|>`` = 1 (also padding), then the 512 byte symbols: vocabulary size 514.
    """
    from transformers import CLIPTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in bytes_to_unicode().values():
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(
        vocab=str(directory / "vocab.json"), merges=str(directory / "merges.txt"), model_max_length=CLIP_MAX_LENGTH
    )
    tok.save_pretrained(directory)
    return directory


def clip_vocab_size() -> int:
    """Vocabulary size of :func:`write_tiny_clip_tokenizer`'s tokenizer: 2 specials + 512 byte symbols."""
    return 2 + 2 * 256


def write_tiny_t5_tokenizer(directory: str | Path) -> Path:
    """Write a Unigram T5 tokenizer over lowercase letters, digits and punctuation; return its folder.

    Built from a list of (piece, score) pairs (transformers 5 ``T5Tokenizer(vocab=...)``), no
    sentinel tokens; ids: ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2. Load it with
    ``T5TokenizerFast.from_pretrained(folder)`` (or ``AutoTokenizer``).
    """
    from transformers import T5Tokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok = T5Tokenizer(vocab=t5_vocab(), extra_ids=0)
    tok.save_pretrained(directory)
    return directory


def t5_vocab() -> list[tuple[str, float]]:
    """(piece, log-probability) pairs: specials, '▁', '▁x' and 'x' for every character x."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    chars = string.ascii_lowercase + string.digits + string.punctuation
    pieces += [("▁" + c, -3.0) for c in chars] + [(c, -4.0) for c in chars]
    return pieces


def clip_text_encoder(
    cls_name: str,
    seed: int,
    vocab_size: int | None = None,
    width: int = CLIP_WIDTH,
    intermediate: int = 37,
    max_length: int = CLIP_MAX_LENGTH,
) -> torch.nn.Module:
    """A random 2-layer ``transformers.<cls_name>`` (CLIPTextModel or CLIPTextModelWithProjection) of hidden and
    projection width ``width``, weights from ``torch.manual_seed(seed)``, in eval mode; ``vocab_size`` defaults to
    the tiny tokenizer's."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.CLIPTextConfig(
        vocab_size=vocab_size or clip_vocab_size(),
        hidden_size=width,
        intermediate_size=intermediate,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=max_length,
        projection_dim=width,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_act="gelu",
    )
    return getattr(transformers, cls_name)(config).eval()


def t5_text_encoder(
    seed: int, width: int, layers: int, vocab_size: int | None = None, d_kv: int = 8, position_bias: bool = True
) -> torch.nn.Module:
    """A random T5 encoder of ``d_model`` ``width`` and ``layers`` layers (weights from ``torch.manual_seed(seed)``),
    in eval mode. ``position_bias=False`` zeroes the relative position bias: no position information, so identical
    input tokens (the padding) get identical outputs wherever they sit."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab_size or len(t5_vocab()),
        d_model=width,
        d_ff=2 * width,
        d_kv=d_kv,
        num_layers=layers,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    model = T5EncoderModel(config).eval()
    if not position_bias:
        with torch.no_grad():
            for module in model.modules():
                bias = getattr(module, "relative_attention_bias", None)
                if bias is not None:
                    bias.weight.zero_()
    return model


def _vae(seed: int, shift_factor: float, scaling_factor: float):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=4,
        sample_size=32,
        shift_factor=shift_factor,
        scaling_factor=scaling_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()


def _tokenizers(root: Path) -> tuple[Path, Path]:
    return write_tiny_clip_tokenizer(root / "_clip_tokenizer"), write_tiny_t5_tokenizer(root / "_t5_tokenizer")


def build_tiny_flux_pipeline(
    root: str | Path, guidance_embeds: bool = True, t5_width: int = T5_WIDTH, t5_layers: int = 2, seed: int = 0
) -> Path:
    """Save a random ``FluxPipeline`` (guidance-distilled like FLUX.1-dev by default) to ``root/tiny-flux``.

    Transformer: 1 double + 1 single block, 2 heads of 16, in_channels 16 (4 latent channels
    packed 2x2), joint_attention_dim = ``t5_width``, pooled_projection_dim 32 (CLIP width).
    Scheduler: FLUX.1-dev's (dynamic shift, base 0.5 / max 1.15). Returns the folder.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTokenizer, T5TokenizerFast

    root = Path(root)
    out = root / "tiny-flux"
    clip_dir, t5_dir = _tokenizers(root / "_flux_tok")
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * LATENT_CHANNELS,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=t5_width,
        pooled_projection_dim=CLIP_WIDTH,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 6, 6),
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=_vae(seed + 1, shift_factor=0.1159, scaling_factor=0.3611),
        text_encoder=clip_text_encoder("CLIPTextModel", seed + 2),
        tokenizer=CLIPTokenizer.from_pretrained(clip_dir),
        text_encoder_2=t5_text_encoder(seed + 3, t5_width, t5_layers),
        tokenizer_2=T5TokenizerFast.from_pretrained(t5_dir),
        transformer=transformer,
    )
    pipe.save_pretrained(out)
    return out


def build_tiny_sd3_pipeline(
    root: str | Path, t5_width: int = 2 * CLIP_WIDTH, t5_layers: int = 2, seed: int = 0
) -> Path:
    """Save a random ``StableDiffusion3Pipeline`` to ``root/tiny-sd3`` and return the folder.

    Transformer: 1 joint block, patch 2, 4 heads of 8, joint_attention_dim = ``t5_width``
    (>= 64: the two CLIP widths are zero-padded to it), pooled_projection_dim 64 (two CLIP
    projections). Scheduler: SD3's (fixed shift 3.0).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTokenizer, T5TokenizerFast

    if t5_width < 2 * CLIP_WIDTH:
        raise ValueError(
            f"t5_width={t5_width} must be >= {2 * CLIP_WIDTH} "
            "(SD3 pads the concatenated CLIP embeddings to the T5 width)"
        )
    root = Path(root)
    out = root / "tiny-sd3"
    clip_dir, t5_dir = _tokenizers(root / "_sd3_tok")
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=LATENT_CHANNELS,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=t5_width,
        pooled_projection_dim=2 * CLIP_WIDTH,
        out_channels=LATENT_CHANNELS,
        pos_embed_max_size=32,
    ).eval()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=_vae(seed + 1, shift_factor=0.0609, scaling_factor=1.5305),
        text_encoder=clip_text_encoder("CLIPTextModelWithProjection", seed + 2),
        tokenizer=CLIPTokenizer.from_pretrained(clip_dir),
        text_encoder_2=clip_text_encoder("CLIPTextModelWithProjection", seed + 3),
        tokenizer_2=CLIPTokenizer.from_pretrained(clip_dir),
        text_encoder_3=t5_text_encoder(seed + 4, t5_width, t5_layers),
        tokenizer_3=T5TokenizerFast.from_pretrained(t5_dir),
    )
    pipe.save_pretrained(out)
    return out


WAN_LATENT_CHANNELS = 4
"""Latent channels (z_dim) of the tiny Wan VAE (Wan 2.1: 16)."""
WAN_LATENTS_MEAN = (0.1, -0.2, 0.3, 0.0)
WAN_LATENTS_STD = (1.5, 0.5, 2.0, 1.0)
"""Per-channel latent statistics of the tiny Wan VAE config (not 0 / 1, so a missing normalization shows)."""


def build_tiny_wan_pipeline(root: str | Path, t5_width: int = T5_WIDTH, seed: int = 0, flow_shift: float = 3.0) -> Path:
    """Save a random Wan 2.1 text-to-video ``WanPipeline`` to ``root/tiny-wan`` and return the folder.

    Transformer: 1 block, patch (1, 2, 2), 2 heads of 8, text_dim = ``t5_width``, 4 latent
    channels. VAE: ``AutoencoderKLWan`` with Wan's layout (spatial scale 8, temporal 4: frames
    4k + 1, sides multiples of 16 px) at base_dim 4, z_dim 4, latent statistics
    :data:`WAN_LATENTS_MEAN` / :data:`WAN_LATENTS_STD`. Text: a 1-layer ``UMT5EncoderModel``
    with the Unigram tokenizer of :func:`write_tiny_t5_tokenizer`. Scheduler: Wan's
    ``UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift)``.
    E.g. 32 x 48 px, 5 frames -> latents [B, 4, 2, 4, 6] (12 video tokens).
    """
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import T5TokenizerFast, UMT5Config, UMT5EncoderModel

    root = Path(root)
    out = root / "tiny-wan"
    t5_dir = write_tiny_t5_tokenizer(root / "_wan_tok")
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=WAN_LATENT_CHANNELS,
        out_channels=WAN_LATENT_CHANNELS,
        text_dim=t5_width,
        freq_dim=16,
        ffn_dim=32,
        num_layers=1,
        rope_max_seq_len=32,
    ).eval()
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLWan(
        base_dim=4,
        z_dim=WAN_LATENT_CHANNELS,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=list(WAN_LATENTS_MEAN),
        latents_std=list(WAN_LATENTS_STD),
    ).eval()
    torch.manual_seed(seed + 2)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(t5_vocab()),
            d_model=t5_width,
            d_ff=2 * t5_width,
            d_kv=8,
            num_layers=1,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    ).eval()
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift, num_train_timesteps=1000
    )
    pipe = WanPipeline(
        tokenizer=T5TokenizerFast.from_pretrained(t5_dir),
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        transformer=transformer,
    )
    pipe.save_pretrained(out)
    return out


FLUX_ADAPTER_LATENT_CHANNELS = 16
"""Latent channels C of :func:`build_tiny_flux_adapter`'s inputs (packed 2x2 into 64 transformer channels)."""
FLUX_ADAPTER_LATENT_SIZE = 32
"""Latent side H = W of :func:`tiny_flux_batches` (256 image tokens after packing)."""
FLUX_ADAPTER_TEXT_LEN = 32
"""Text tokens L of :func:`tiny_flux_batches`."""
FLUX_ADAPTER_TEXT_DIM = 64
"""Text embedding width (``joint_attention_dim``) of :func:`build_tiny_flux_adapter`."""
FLUX_ADAPTER_POOLED_DIM = 32
"""Pooled text embedding width (``pooled_projection_dim``) of :func:`build_tiny_flux_adapter`."""


def build_tiny_flux_adapter(device: torch.device | str = "cpu", seed: int = 0) -> FluxAdapter:
    """A random guidance-distilled ``FluxTransformer2DModel`` in a :class:`~scfm.models.flux.FluxAdapter`, in eval mode.

    2 double + 2 single blocks, 4 heads of 32 (width 128), in_channels 64
    (:data:`FLUX_ADAPTER_LATENT_CHANNELS` packed 2x2), joint_attention_dim
    :data:`FLUX_ADAPTER_TEXT_DIM`, pooled_projection_dim :data:`FLUX_ADAPTER_POOLED_DIM`. Weights
    come from ``torch.manual_seed(seed)``; the adapter is moved to ``device``.
    """
    from diffusers import FluxTransformer2DModel

    from scfm.models.flux import FluxAdapter

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * FLUX_ADAPTER_LATENT_CHANNELS,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=32,
        num_attention_heads=4,
        joint_attention_dim=FLUX_ADAPTER_TEXT_DIM,
        pooled_projection_dim=FLUX_ADAPTER_POOLED_DIM,
        guidance_embeds=True,
        axes_dims_rope=(8, 12, 12),
    )
    return FluxAdapter(transformer).to(device).eval()


def tiny_flux_batches(batch: int, seed: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Endless random training batches B = ``batch`` for :func:`build_tiny_flux_adapter`, on the CPU.

    Each is ``{"x0": [B, 16, 32, 32], "prompt_embeds": [B, 32, 64], "pooled_prompt_embeds": [B, 32],
    "guidance": [B]}``: standard normal latents and embeddings, per-sample guidance in U[0, 7.5],
    drawn from one ``torch.Generator`` seeded with ``seed``.
    """
    gen = torch.Generator().manual_seed(seed)
    c, side = FLUX_ADAPTER_LATENT_CHANNELS, FLUX_ADAPTER_LATENT_SIZE
    while True:
        yield {
            "x0": torch.randn(batch, c, side, side, generator=gen),
            "prompt_embeds": torch.randn(batch, FLUX_ADAPTER_TEXT_LEN, FLUX_ADAPTER_TEXT_DIM, generator=gen),
            "pooled_prompt_embeds": torch.randn(batch, FLUX_ADAPTER_POOLED_DIM, generator=gen),
            "guidance": 7.5 * torch.rand(batch, generator=gen),
        }
