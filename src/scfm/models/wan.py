"""Wan 2.1 text-to-video adapter: ``WanTransformer3DModel`` behind ``forward(x, t, **cond) -> v``, with true CFG.

Convention check (diffusers 0.42, read from the source):

- Wan ships ``UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
  flow_shift=3.0)`` (480p; 5.0 for 720p). With flow sigmas ``alpha_t = 1 - sigma``,
  ``sigma_t = sigma``, so ``x_sigma = (1 - sigma) x0 + sigma eps``: sigma is the spec's t
  (t = 1 noise). ``convert_model_output`` forms ``x0_pred = sample - sigma * model_output``,
  which is exact iff ``model_output = eps - x0``: the transformer output is the spec's velocity,
  same sign (``FlowMatchEulerDiscreteScheduler``, which WanPipeline also accepts, agrees).
- ``set_timesteps`` makes ``timesteps = sigmas * 1000`` (cast to int64) and ``WanPipeline``
  passes them unscaled (``t.expand(B)``) to the transformer, whose sinusoidal projection runs
  in float32. So the adapter passes ``t * 1000`` as float32 (not truncated to an integer: the
  embedding is continuous, and a [0, 1] time grid should not be quantized to 1/1000 steps;
  never in bf16, whose 8-bit mantissa would round 997 to 996).
- Latents: x [B, C, F, h, w] (Wan 2.1: C = 16, F = (frames - 1) / 4 + 1, h, w = H / 8, W / 8)
  in the pipeline's NORMALIZED space ``(z - latents_mean) / latents_std`` (VAE config), which
  is where ``WanPipeline`` draws its noise and what it returns with ``output_type="latent"``.
  The transformer patchifies itself (``patch_size`` (1, 2, 2): h and w even) and returns
  [B, C, F, h, w]; the token count is F * h/2 * w/2 (:meth:`WanAdapter.seq_len`).

cond keys: ``prompt_embeds`` [B, L, D] (UMT5, D = 4096, L = 512: the pipeline zero-pads every
prompt to 512 tokens and uses no text mask, so the padding length matters: encode with
``max_sequence_length=512`` as :meth:`WanAdapter.encode_prompts` does) and, for CFG,
``negative_prompt_embeds`` [B or 1, L, D] (one row broadcasts).

Classifier-free guidance (see :mod:`scfm.models.cfg` for ``cfg_mode``: "runtime", "baked",
"none", exactly as for SD3)::

    v = v_c + w * (v_c - v_neg)        (w = guidance_scale, default 3.5)

WanPipeline computes ``v_neg + s * (v_c - v_neg)``, so ``s = w + 1``. The default w = 3.5 is the
spec's for true-CFG models (and ``DistillConfig.cfg_scale``'s, which ``scfm distill`` passes);
Wan 2.1's own sampling default, pipeline ``guidance_scale=5.0``, is w = 4. The negative prompt: the spec's and
``WanPipeline.encode_prompt``'s default is the empty prompt ""; the original Wan repository
samples with the long Chinese :data:`WAN_NEGATIVE_PROMPT`. It is a constructor argument
(``negative_prompt``, used by :meth:`WanAdapter.encode_cond`) and a keyword of the pipeline hooks.

Pipeline hooks (classmethods, on a loaded ``WanPipeline``): :meth:`~WanAdapter.encode_prompts`,
:meth:`~WanAdapter.generate_latents` (teacher samples), :meth:`~WanAdapter.encode_images` and
:meth:`~WanAdapter.decode_latents`; all latents in the normalized space above.

Scope: the text-to-video transformer (Wan 2.1 T2V 1.3B / 14B; the Wan 2.2 TI2V-5B transformer
used for text-to-video also works, its per-token timesteps being all equal then). Image-to-video
transformers (``image_dim`` set, in_channels != out_channels) and Wan 2.2 A14B's second expert
(``transformer_2``) are not wrapped.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from scfm.models.adapters import VelocityAdapter, expand_batch, read_component_config, register_adapter
from scfm.models.cfg import TrueCFG, combine_cfg

WAN_LORA_TARGETS: tuple[str, ...] = (
    # embedders: timestep MLP, the projection that makes every block's adaptive-norm
    # shift/scale/gate (Wan has no per-block norm Linear: its norms are LayerNorms modulated
    # by time_proj's output plus a learned scale_shift_table), and the text projection
    "condition_embedder.time_embedder.linear_1",
    "condition_embedder.time_embedder.linear_2",
    "condition_embedder.time_proj",
    "condition_embedder.text_embedder.linear_1",
    "condition_embedder.text_embedder.linear_2",
    # self-attention (video tokens) and cross-attention (text)
    "attn1.to_q",
    "attn1.to_k",
    "attn1.to_v",
    "attn1.to_out.0",
    "attn2.to_q",
    "attn2.to_k",
    "attn2.to_v",
    "attn2.to_out.0",
    # MLP and the output projection
    "ffn.net.0.proj",
    "ffn.net.2",
    "proj_out",
)
"""Every Linear of the Wan 2.1 T2V transformer: attention, MLP, embedders and the adaptive-norm
projection (the SCFM targets by analogy with the official Flux/SD3 lists; ``patch_embedding``
is a Conv3d, which scfm's LoRA does not adapt)."""

WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
"""The negative prompt of the original Wan 2.1 sampling config (``sample_neg_prompt``); its English
version is in diffusers' WanPipeline example. Not the default: the spec's default is ""."""


# ----------------------------------------------------------------------------- native module names

WAN_NATIVE_NAMES: dict[str, str] = {
    "patch_embedding": "patch_embedding",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.image_embedder.norm1": "img_emb.proj.0",
    "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
    "condition_embedder.image_embedder.ff.net.2": "img_emb.proj.3",
    "condition_embedder.image_embedder.norm2": "img_emb.proj.4",
    "proj_out": "head.head",
}
"""Diffusers ``WanTransformer3DModel`` module -> the original Wan module (the names of Wan-AI's checkpoints and of
ComfyUI's ``WanModel``), outside the blocks. Every entry is a rename with the same weight shape."""

WAN_NATIVE_BLOCK_NAMES: dict[str, str] = {
    "attn1.to_q": "self_attn.q",
    "attn1.to_k": "self_attn.k",
    "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn1.norm_q": "self_attn.norm_q",
    "attn1.norm_k": "self_attn.norm_k",
    "attn2.to_q": "cross_attn.q",
    "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o",
    "attn2.norm_q": "cross_attn.norm_q",
    "attn2.norm_k": "cross_attn.norm_k",
    "attn2.add_k_proj": "cross_attn.k_img",  # image-to-video cross-attention on the CLIP image tokens
    "attn2.add_v_proj": "cross_attn.v_img",
    "attn2.norm_added_k": "cross_attn.norm_k_img",
    "norm2": "norm3",  # the affine norm before cross-attention: diffusers swapped the names of norm2 and norm3
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
}
"""The same inside block N (``blocks.N.<diffusers>`` -> ``blocks.N.<native>``), also same shapes."""

_FUSED_PROJECTIONS = ("attn1.to_qkv", "attn2.to_kv", "attn2.to_added_kv")


def native_module_name(module_path: str) -> str:
    """The original Wan name of the diffusers ``WanTransformer3DModel`` module ``module_path``
    (:data:`WAN_NATIVE_NAMES`, :data:`WAN_NATIVE_BLOCK_NAMES`): ``blocks.0.attn1.to_q`` -> ``blocks.0.self_attn.q``.

    Raises ``ValueError`` naming the module when the original model has no counterpart: fused projections
    (``attn1.to_qkv`` after diffusers' ``fuse_qkv_projections``) and modules that are not the Wan 2.1 / 2.2
    transformer's.
    """
    if module_path in WAN_NATIVE_NAMES:
        return WAN_NATIVE_NAMES[module_path]
    block, _, inner = module_path.removeprefix("blocks.").partition(".")
    if module_path.startswith("blocks.") and block.isdigit() and inner in WAN_NATIVE_BLOCK_NAMES:
        return f"blocks.{block}.{WAN_NATIVE_BLOCK_NAMES[inner]}"
    if inner in _FUSED_PROJECTIONS:
        why = (
            "it is a fused projection (diffusers' fuse_qkv_projections), and the original Wan model keeps q, k and v "
            "as separate Linear layers; attach the LoRA to an unfused transformer"
        )
    else:
        why = (
            "the original Wan model has no such module (scfm.models.wan.WAN_NATIVE_NAMES and WAN_NATIVE_BLOCK_NAMES "
            "list the ones it has); leave it out of the LoRA targets"
        )
    raise ValueError(f"Wan transformer module {module_path!r} has no original Wan name: {why}")


# ----------------------------------------------------------------------------- scheduler check


# ----------------------------------------------------------------------------- latent normalization


def latent_stats(
    vae: torch.nn.Module, device: torch.device | str, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(latents_mean, latents_std)`` of an ``AutoencoderKLWan`` config, each [1, z_dim, 1, 1, 1]."""
    cfg = vae.config
    shape = (1, int(cfg.z_dim), 1, 1, 1)
    mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(shape).to(device, dtype)
    std = torch.tensor(cfg.latents_std, dtype=torch.float32).view(shape).to(device, dtype)
    return mean, std


def normalize_latents(z: torch.Tensor, vae: torch.nn.Module) -> torch.Tensor:
    """Raw VAE latents z [B, z_dim, F, h, w] -> the transformer's space ``(z - mean) / std``."""
    mean, std = latent_stats(vae, z.device, z.dtype)
    return (z - mean) / std


def denormalize_latents(x0: torch.Tensor, vae: torch.nn.Module) -> torch.Tensor:
    """The transformer's latents x0 [B, z_dim, F, h, w] -> raw VAE latents ``x0 * std + mean``
    (WanPipeline's decode)."""
    mean, std = latent_stats(vae, x0.device, x0.dtype)
    return x0 * std + mean


# ----------------------------------------------------------------------------- adapter


@register_adapter("wan")
class WanAdapter(TrueCFG, VelocityAdapter):
    """``WanTransformer3DModel`` (text-to-video) as a velocity model on video latents [B, C, F, h, w].

    ``forward(x, t, prompt_embeds, negative_prompt_embeds=None) -> v`` with t in [0, 1] (t = 1
    noise) and v = eps - x0 in x's shape and dtype. ``guidance_scale`` is w in
    ``v_c + w (v_c - v_neg)`` (pipeline ``guidance_scale = w + 1``); ``cfg_mode`` is "runtime",
    "baked" or "none" (:mod:`scfm.models.cfg`); ``negative_prompt`` is the text the negative
    embeddings encode (:meth:`encode_cond`).
    """

    transformer_class_name = "WanTransformer3DModel"
    pipeline_class_name: ClassVar[str] = "WanPipeline"
    default_lora_targets = WAN_LORA_TARGETS
    # No official SCFM Wan run exists; the settings of the reference's other true-CFG run (SD3):
    # grad clip 2, and no resolution shift: Wan samples with a fixed flow_shift (3.0 at 480p,
    # inside the spec's U[2.5, 4.5] training range), and Flux's mu line extrapolated to a video's
    # token count (81 frames at 480p: 21 * 30 * 52 = 32760 tokens) would give a shift of ~400.
    recommended_config: ClassVar[dict[str, Any]] = {
        "lora.targets": WAN_LORA_TARGETS,
        "grad_clip": 2.0,
        "plan.resolution_shift_prob": 0.0,
        "lora.rank": 64,
        "lora.init": "gaussian",
        "weight_decay": 1e-4,
        "final_weights": "student",
        "lora.alpha": 64.0,
    }
    cond_keys = ("prompt_embeds", "negative_prompt_embeds")
    latent_ndim = 5
    default_shift = 3.0
    """Wan 2.1's flow_shift at 480p (inside the training range U[2.5, 4.5])."""
    pipeline_tag = "text-to-video"

    default_negative_prompt: ClassVar[str] = ""
    """Negative prompt of the pipeline hooks when none is given (the spec's empty prompt)."""
    num_frames: ClassVar[int] = 5
    """Video length of :meth:`generate_latents` when none is given (4k + 1; 5 frames = 2 latent
    frames keeps teacher data cheap; Wan 2.1 is trained and sampled at 81)."""
    max_sequence_length: ClassVar[int] = 512
    """Text tokens per prompt, zero-padded: WanPipeline.__call__'s default (its encode_prompt defaults to 226)."""

    @classmethod
    def comfyui_lora_key(cls, module_path: str) -> str:
        """``diffusion_model.<original Wan module>``: ComfyUI maps no diffusers names onto its Wan model, only the
        original ones under ``diffusion_model.`` (the generic entries of ``comfy.lora.model_lora_keys_unet``), e.g.
        ``blocks.0.attn1.to_q`` -> ``diffusion_model.blocks.0.self_attn.q`` (:func:`native_module_name`, which raises
        ``ValueError`` for a module the original model lacks)."""
        try:
            return "diffusion_model." + native_module_name(module_path)
        except ValueError as err:
            raise ValueError(f"{err} (ComfyUI loads Wan LoRAs under the original names only)") from err

    def __init__(
        self,
        transformer: torch.nn.Module,
        guidance_scale: float = 3.5,
        cfg_mode: str = "runtime",
        negative_prompt: str = "",
    ) -> None:
        super().__init__(transformer)
        cfg = transformer.config
        if getattr(cfg, "image_dim", None) is not None or cfg.in_channels != (cfg.out_channels or cfg.in_channels):
            raise ValueError(
                "WanAdapter wraps the text-to-video transformer (image_dim=None, in_channels == out_channels); "
                f"this one has image_dim={cfg.image_dim}, in_channels={cfg.in_channels}, "
                f"out_channels={cfg.out_channels} (an image-to-video model, which needs image conditioning "
                "scfm does not pass). Use a Wan T2V checkpoint."
            )
        self._init_cfg(guidance_scale, cfg_mode)
        self.negative_prompt = str(negative_prompt)

    # ------------------------------------------------------------------ layout
    @property
    def dtype(self) -> torch.dtype:
        """The dtype the transformer takes its input in (its patch embedding's; a bf16 Wan keeps
        time_embedder, norms and scale_shift_table in float32)."""
        return self.transformer.patch_embedding.weight.dtype

    @property
    def patch_size(self) -> tuple[int, int, int]:
        """(frames, height, width) patch of the transformer; Wan 2.1: (1, 2, 2)."""
        p_t, p_h, p_w = self.transformer.config.patch_size
        return int(p_t), int(p_h), int(p_w)

    @property
    def latent_channels(self) -> int:
        """Channels C of the latent (Wan 2.1: 16)."""
        return int(self.transformer.config.in_channels)

    def seq_len(self, x: torch.Tensor) -> int:
        """Video tokens (F / p_t) * (h / p_h) * (w / p_w) for latents x [B, C, F, h, w]."""
        p_t, p_h, p_w = self.patch_size
        return (x.shape[-3] // p_t) * (x.shape[-2] // p_h) * (x.shape[-1] // p_w)

    def _check_x_t(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """Validate x [B, C, F, h, w] against the transformer; return t as a [B] tensor on x's device."""
        t = super()._check_x_t(x, t)
        _, c, f, h, w = x.shape
        if c != self.latent_channels:
            raise ValueError(f"x has {c} channels but this Wan transformer expects in_channels={self.latent_channels}")
        p_t, p_h, p_w = self.patch_size
        if f % p_t or h % p_h or w % p_w:
            raise ValueError(
                f"Wan latents [F, h, w] = [{f}, {h}, {w}] must be divisible by patch_size={self.patch_size}"
            )
        return t

    # ------------------------------------------------------------------ velocity
    def forward(self, x: torch.Tensor, t: torch.Tensor, **cond: Any) -> torch.Tensor:
        """v [B, C, F, h, w] in ``x.dtype`` for latents x [B, C, F, h, w], t [B] (or 0-dim) in [0, 1]."""
        self._check_cond(cond)
        t = self._check_x_t(x, t)
        if "prompt_embeds" not in cond:
            raise ValueError(
                f"WanAdapter needs cond 'prompt_embeds' [B, L, D] (UMT5 embeddings); got keys {sorted(cond)}"
            )
        b, dtype, device = x.shape[0], self.dtype, x.device
        prompt = expand_batch(cond["prompt_embeds"], b, "prompt_embeds").to(device, dtype)
        hidden, timestep = x.to(dtype), (t * 1000).to(torch.float32)
        if not self.cfg_active:
            return self._call(hidden, timestep, prompt).to(x.dtype)
        self._require_negative(cond, ("negative_prompt_embeds",))
        neg = expand_batch(cond["negative_prompt_embeds"], b, "negative_prompt_embeds").to(device, dtype)
        if neg.shape != prompt.shape:
            raise ValueError(
                f"negative_prompt_embeds {tuple(neg.shape)} must match prompt_embeds {tuple(prompt.shape)} "
                f"(encode both with the same max_sequence_length, {self.max_sequence_length} for WanPipeline)"
            )
        both = self._call(torch.cat([hidden, hidden]), torch.cat([timestep, timestep]), torch.cat([prompt, neg]))
        return combine_cfg(both.to(x.dtype), self.guidance_scale)

    def _call(self, hidden: torch.Tensor, timestep: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        return self.transformer(
            hidden_states=hidden, timestep=timestep, encoder_hidden_states=prompt, return_dict=False
        )[0]

    # ------------------------------------------------------------------ loading
    # ------------------------------------------------------------------ pipeline hooks
    @classmethod
    def encode_prompts(
        cls, pipe: Any, prompts: list[str], device: torch.device | str, negative_prompt: str | None = None
    ) -> dict[str, torch.Tensor]:
        """UMT5 embeddings for ``forward``: ``prompt_embeds`` [B, L, D] (one row per prompt) and
        ``negative_prompt_embeds`` [1, L, D] (``negative_prompt``, default ""), L = 512, in the
        text encoder's dtype on ``device``; one encoder call, no gradient."""
        prompts = _prompt_list(prompts)
        negative = cls.default_negative_prompt if negative_prompt is None else negative_prompt
        with torch.no_grad():
            embeds, _ = pipe.encode_prompt(
                prompt=prompts + [negative],
                do_classifier_free_guidance=False,
                max_sequence_length=cls.max_sequence_length,
                device=device,
            )
        return {"prompt_embeds": embeds[:-1], "negative_prompt_embeds": embeds[-1:]}

    def encode_cond(self, pipe: Any, prompts: list[str], device: torch.device | str) -> dict[str, torch.Tensor]:
        """:meth:`encode_prompts` with this adapter's ``negative_prompt``."""
        return type(self).encode_prompts(pipe, prompts, device, negative_prompt=self.negative_prompt)

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
        num_frames: int | None = None,
        negative_prompt: str | None = None,
    ) -> torch.Tensor:
        """Teacher samples x0 [B, C, F, h, w] (float32, normalized latents) from ``WanPipeline``.

        ``guidance`` is scfm's w (``v_c + w (v_c - v_neg)``): the pipeline gets
        ``guidance_scale = w + 1`` (w = 0: unguided). ``num_frames`` (4k + 1, default
        :attr:`num_frames`) gives F = (num_frames - 1) / 4 + 1 latent frames; ``height`` and
        ``width`` in pixels must be multiples of vae scale x patch (16 for Wan 2.1). The pipeline's
        own scheduler (UniPC, flow_shift 3.0 for Wan 2.1) integrates ``steps`` steps.
        ``generator``: one generator or one per prompt, passed to the pipeline unchanged.
        """
        prompts = _prompt_list(prompts)
        frames = cls.num_frames if num_frames is None else int(num_frames)
        temporal = int(pipe.vae_scale_factor_temporal)
        if frames < 1 or (frames - 1) % temporal:
            raise ValueError(
                f"num_frames={frames} must be {temporal}k + 1 (e.g. 5, 49, 81): "
                f"the Wan VAE compresses time by {temporal}"
            )
        p_h, p_w = pipe.transformer.config.patch_size[1:]
        spatial = int(pipe.vae_scale_factor_spatial)
        multiple_h, multiple_w = math.lcm(16, spatial * p_h), math.lcm(16, spatial * p_w)
        if height % multiple_h or width % multiple_w:
            raise ValueError(
                f"height={height}, width={width} must be multiples of {multiple_h} x {multiple_w} pixels "
                "(vae scale x patch, and 16)"
            )
        negative = cls.default_negative_prompt if negative_prompt is None else negative_prompt
        out = pipe(
            prompt=prompts,
            negative_prompt=[negative] * len(prompts),
            height=height,
            width=width,
            num_frames=frames,
            num_inference_steps=steps,
            guidance_scale=float(guidance) + 1.0,
            generator=generator,
            output_type="latent",
            max_sequence_length=cls.max_sequence_length,
        )
        return out.frames.float()

    @classmethod
    def base_license(cls, base_model: str) -> dict[str, str]:
        """Wan 2.1 / 2.2 (Wan-AI): apache-2.0; {} for other bases."""
        return {"license": "apache-2.0"} if base_model.lower().startswith("wan-ai/") else {}

    @classmethod
    def pixel_multiple(cls, path_or_id: str | os.PathLike, local_files_only: bool = False) -> int | None:
        """Frame sides must be multiples of this many pixels: lcm(16, vae scale x patch), 16 for Wan 2.1.

        Read from ``vae/config.json`` (``scale_factor_spatial``, else 2^(len(dim_mult) - 1) x the
        VAE's own ``patch_size``) and ``transformer/config.json`` (``patch_size`` (1, 2, 2)) without
        loading weights; None when the VAE config cannot be read. (WanPipeline.check_inputs wants 16.)
        """
        vae = read_component_config(path_or_id, "vae", local_files_only)
        if not vae:
            return None
        spatial = vae.get("scale_factor_spatial") or 2 ** (len(vae.get("dim_mult") or [1, 2, 4, 4]) - 1) * int(
            vae.get("patch_size") or 1
        )
        transformer = read_component_config(path_or_id, "transformer", local_files_only) or {}
        patch = transformer.get("patch_size") or (1, 2, 2)
        return math.lcm(16, int(spatial) * int(patch[1]), int(spatial) * int(patch[2]))

    @classmethod
    def encode_images(
        cls, pipe: Any, images: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None = None
    ) -> torch.Tensor:
        """Videos [B, 3, F, H, W] in [-1, 1] -> x0 [B, C, (F - 1) / 4 + 1, H / 8, W / 8] float32 (normalized latents).

        Images [B, 3, H, W] (``scfm generate-data --images``) are encoded as one-frame videos
        (F = 1: x0 [B, C, 1, H / 8, W / 8]; Wan is trained on images that way). With
        ``generator`` a sample of the VAE posterior (as diffusers' training scripts use);
        without, its mean (deterministic). F must be 4k + 1.
        """
        vae = pipe.vae
        if images.dim() == 4:
            images = images.unsqueeze(2)
        if images.dim() != 5 or images.shape[1] != 3:
            raise ValueError(
                "encode_images expects videos [B, 3, F, H, W] (or images [B, 3, H, W]) in [-1, 1], "
                f"got shape {tuple(images.shape)}"
            )
        temporal = int(pipe.vae_scale_factor_temporal)
        if (images.shape[2] - 1) % temporal:
            raise ValueError(f"videos have {images.shape[2]} frames; the Wan VAE needs {temporal}k + 1 (e.g. 1, 5, 81)")
        with torch.no_grad():
            posterior = vae.encode(images.to(vae.device, vae.dtype)).latent_dist
            z = posterior.sample(generator) if generator is not None else posterior.mode()
        return normalize_latents(z.float(), vae)

    @classmethod
    def decode_latents(cls, pipe: Any, x0: torch.Tensor) -> torch.Tensor:
        """Normalized latents x0 [B, C, F, h, w] -> videos [B, 3, 4(F - 1) + 1, 8h, 8w] float32 in [0, 1]."""
        vae = pipe.vae
        if x0.dim() != 5 or x0.shape[1] != vae.config.z_dim:
            raise ValueError(
                f"decode_latents expects latents [B, {vae.config.z_dim}, F, h, w], got shape {tuple(x0.shape)}"
            )
        with torch.no_grad():
            z = denormalize_latents(x0.to(vae.device, torch.float32), vae).to(vae.dtype)
            video = vae.decode(z, return_dict=False)[0]
        return (video.float() / 2 + 0.5).clamp(0, 1)


def _prompt_list(prompts: Sequence[str] | str) -> list[str]:
    if isinstance(prompts, str):
        return [prompts]
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    return prompts
