"""Flux.1 adapter: ``FluxTransformer2DModel`` behind ``forward(x, t, **cond) -> v``.

Convention check (diffusers 0.42, read from the source):

- ``FlowMatchEulerDiscreteScheduler.scale_noise`` forms ``x_sigma = sigma * eps + (1 - sigma) * x0``
  and ``step`` does ``prev_sample = sample + (sigma_next - sigma) * model_output``. So sigma is
  the spec's t (t = 1 is noise) and the model output is ``dx/dsigma = eps - x0``: the spec's
  velocity, same sign. The spec's Euler step ``x + (t_next - t) v`` is that scheduler step.
- ``FluxPipeline`` calls the transformer with ``timestep = scheduler_timestep / 1000 = sigma``
  and the transformer multiplies by 1000 inside (``timestep.to(dtype) * 1000``; the guidance
  value is multiplied by 1000 the same way). So the adapter passes ``t`` in [0, 1] unchanged
  and the guidance value as the user would give it to the pipeline (e.g. 3.5).
- Latents: the pipeline packs [B, C, H, W] latents into 2x2 patch tokens [B, H/2 * W/2, 4C]
  (``_pack_latents``) with position ids ``(0, row, col)`` per token
  (``_prepare_latent_image_ids`` at H/2 x W/2) and text ids all zero [L, 3]. The adapter
  does the same and unpacks the output (``_unpack_latents``).

cond keys: ``prompt_embeds`` [B, L, D] (T5), ``pooled_prompt_embeds`` [B, P] (CLIP), and
``guidance`` [B] (a float or a 1-row tensor broadcasts) when the transformer has
``guidance_embeds`` (Flux.1-dev). For distillation the spec draws the guidance per sample,
U[0, 7.5], and gives the same value to teacher, EMAs and student: put it in each batch with
:func:`with_guidance` (or :func:`draw_guidance`); since it is a cond tensor, the loop hands the
same rows to every velocity call.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from scfm.models.adapters import (
    VelocityAdapter,
    expand_batch,
    onetrainer_lora_key,
    read_component_config,
    register_adapter,
    vae_decode_latents,
    vae_encode_images,
)
from scfm.models.counted_text import TEXT_LOG_COUNT, text_counts

FLUX_LORA_TARGETS: tuple[str, ...] = (
    # embedders
    "time_text_embed.timestep_embedder.linear_1",
    "time_text_embed.timestep_embedder.linear_2",
    "time_text_embed.text_embedder.linear_1",
    "time_text_embed.text_embedder.linear_2",
    "time_text_embed.guidance_embedder.linear_1",
    "time_text_embed.guidance_embedder.linear_2",
    "context_embedder",
    "x_embedder",
    # adaptive norms
    "norm.linear",
    "norm1.linear",
    "norm1_context.linear",
    "norm_out.linear",
    # attention
    "attn.to_k",
    "attn.to_q",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_k_proj",
    "attn.add_q_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    # MLPs (double blocks, single blocks) and the output projections
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
    "proj_mlp",
    "proj_out",
)
"""The official SCFM Flux LoRA layers (scripts/train_flux_scfm.sh of the reference code)."""


def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H/2 * W/2, 4C] 2x2 patch tokens (diffusers ``FluxPipeline._pack_latents``)."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, H/2 * W/2, 4C] -> [B, C, H, W]; the inverse of :func:`pack_latents` (``_unpack_latents``)."""
    b, _, d = tokens.shape
    x = tokens.view(b, height // 2, width // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, height, width)


def latent_image_ids(
    height: int, width: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Position ids [H/2 * W/2, 3] = (0, row, col) of the packed tokens (``_prepare_latent_image_ids``)."""
    h2, w2 = height // 2, width // 2
    ids = torch.zeros(h2, w2, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(h2)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(w2)[None, :]
    return ids.reshape(h2 * w2, 3).to(device=device, dtype=dtype)


def draw_guidance(batch_size: int, generator: torch.Generator, low: float = 0.0, high: float = 7.5) -> torch.Tensor:
    """Per-sample guidance values [B] ~ U[low, high] from ``generator`` (spec: U[0, 7.5]), float32 on CPU."""
    if not low <= high:
        raise ValueError(f"guidance range low={low} > high={high}")
    return low + (high - low) * torch.rand(batch_size, generator=generator, dtype=torch.float32)


def with_guidance(
    data: Iterable[dict[str, Any]], generator: torch.Generator, low: float = 0.0, high: float = 7.5
) -> Iterator[dict[str, Any]]:
    """Yield each batch of ``data`` with a fresh per-sample ``guidance`` [B] drawn by :func:`draw_guidance`."""
    for batch in data:
        yield {**batch, "guidance": draw_guidance(batch["x0"].shape[0], generator, low, high)}


@register_adapter("flux")
class FluxAdapter(VelocityAdapter):
    """``FluxTransformer2DModel`` as a velocity model on unpacked latents [B, C, H, W] (H, W even).

    ``forward(x, t, prompt_embeds, pooled_prompt_embeds, guidance=None) -> v`` with t in [0, 1]
    (t = 1 noise) and v = eps - x0 in x's shape and dtype. Inputs are cast to the
    transformer's dtype; the output is cast back to ``x.dtype``.
    """

    transformer_class_name = "FluxTransformer2DModel"
    pipeline_class_name = "FluxPipeline"
    default_lora_targets = FLUX_LORA_TARGETS
    recommended_config = {
        "lora.targets": FLUX_LORA_TARGETS,
        "grad_clip": 10.0,
        "lora.rank": 64,
        "lora.init": "gaussian",
        "weight_decay": 1e-4,
        "final_weights": "student",
        "lora.alpha": 64.0,
    }
    cond_keys = ("prompt_embeds", "pooled_prompt_embeds", "guidance", TEXT_LOG_COUNT)
    counted_text = True
    default_shift = 3.25
    """The official SCFM Flux inference app's fixed shift (its training grids: s ~ U[2.5, 4.5]). Kept although
    the 8x8 flux-digits student samples better at shift 1 or ``auto`` (2 steps FD 3.5 against 5.6: BENCHMARKS.md):
    at 4 image tokens the resolution shift is 1.6, while FLUX.1 at 512-1024 px trains and samples near 3."""
    draw_guidance = staticmethod(draw_guidance)
    with_guidance = staticmethod(with_guidance)

    @classmethod
    def modelspec_architecture(cls, transformer_config: Any) -> str:
        """``flux-1-dev`` for guidance-distilled transformers, ``flux-1-schnell`` otherwise (kohya's names)."""
        return "flux-1-dev" if transformer_config.get("guidance_embeds") else "flux-1-schnell"

    @classmethod
    def comfyui_lora_key(cls, module_path: str) -> str:
        """OneTrainer's ``lora_transformer_<diffusers path>`` names, which ComfyUI maps for this family."""
        return onetrainer_lora_key(module_path)

    @classmethod
    def base_license(cls, base_model: str) -> dict[str, str]:
        """FLUX.1-schnell: apache-2.0; FLUX.1-dev: its non-commercial license; {} for other bases."""
        name = base_model.lower()
        if "flux.1-schnell" in name:
            return {"license": "apache-2.0"}
        if "flux.1-dev" in name:
            return {
                "license": "other",
                "license_name": "flux-1-dev-non-commercial-license",
                "license_link": "https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md",
            }
        return {}

    @classmethod
    def comfyui_settings(cls, shift: float, guidance: float) -> list[tuple[str, str]]:
        """ComfyUI's Flux sampling: ``ModelSamplingFlux`` with max_shift = base_shift = ln(shift) (a fixed shift
        whatever the resolution), the embedded guidance in ``FluxGuidance``, KSampler euler / simple / cfg 1."""
        import math

        return [
            ("ModelSamplingFlux max_shift", f"{math.log(shift):.4f}"),
            ("ModelSamplingFlux base_shift", f"{math.log(shift):.4f}"),
            ("FluxGuidance guidance", f"{guidance:g}"),
            ("KSampler sampler_name", "euler"),
            ("KSampler scheduler", "simple"),
            ("KSampler cfg", "1"),
        ]

    def __init__(self, transformer: torch.nn.Module) -> None:
        super().__init__(transformer)
        cfg = transformer.config
        if getattr(cfg, "patch_size", 1) != 1:
            raise ValueError(
                f"FluxAdapter expects a transformer with patch_size=1 (2x2 packing is done here), got {cfg.patch_size}"
            )
        if cfg.in_channels % 4:
            raise ValueError(
                f"transformer in_channels={cfg.in_channels} is not 4 x latent channels; "
                "this is not a Flux-layout transformer"
            )

    @property
    def latent_channels(self) -> int:
        """Channels C of the unpacked latent (Flux.1: 16)."""
        return self.transformer.config.in_channels // 4

    @property
    def has_guidance(self) -> bool:
        return bool(self.transformer.config.guidance_embeds)

    def seq_len(self, x: torch.Tensor) -> int:
        """Image tokens (H/2) * (W/2): what FluxPipeline feeds ``calculate_shift``."""
        return (x.shape[-2] // 2) * (x.shape[-1] // 2)

    def forward(self, x: torch.Tensor, t: torch.Tensor, **cond: Any) -> torch.Tensor:
        self._check_cond(cond)
        t = self._check_x_t(x, t)
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"Flux latents need even height and width (2x2 packing), got {h}x{w}")
        if c != self.latent_channels:
            raise ValueError(
                f"x has {c} channels but this Flux transformer expects {self.latent_channels} "
                f"(in_channels={4 * self.latent_channels} after 2x2 packing)"
            )
        for key in ("prompt_embeds", "pooled_prompt_embeds"):
            if key not in cond:
                raise ValueError(
                    f"FluxAdapter needs cond {key!r} (prompt_embeds [B, L, D], pooled_prompt_embeds [B, P]); "
                    f"got keys {sorted(cond)}"
                )
        dtype, device = self.dtype, x.device
        prompt = expand_batch(cond["prompt_embeds"], b, "prompt_embeds").to(device, dtype)
        pooled = expand_batch(cond["pooled_prompt_embeds"], b, "pooled_prompt_embeds").to(device, dtype)
        guidance = self._guidance(cond.get("guidance"), b, device)
        with text_counts(self.transformer, cond):
            out = self.transformer(
                hidden_states=pack_latents(x.to(dtype)),
                timestep=t.to(dtype),
                guidance=guidance,
                pooled_projections=pooled,
                encoder_hidden_states=prompt,
                txt_ids=torch.zeros(prompt.shape[1], 3, device=device, dtype=dtype),
                img_ids=latent_image_ids(h, w, device=device, dtype=dtype),
                return_dict=False,
            )[0]
        return unpack_latents(out, h, w).to(x.dtype)

    # ------------------------------------------------------------------ pipeline hooks
    @classmethod
    @torch.no_grad()
    def encode_prompts(cls, pipe: Any, prompts: list[str], device: torch.device | str) -> dict[str, torch.Tensor]:
        """``{"prompt_embeds": [B, L, D] (T5, L = 512), "pooled_prompt_embeds": [B, P] (CLIP)}`` on ``device``."""
        prompt_embeds, pooled, _ = pipe.encode_prompt(
            prompt=list(prompts), prompt_2=None, device=device, num_images_per_prompt=1
        )
        return {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled}

    @classmethod
    @torch.no_grad()
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
        """FluxPipeline samples (its own dynamic-shift schedule, embedded guidance ``guidance``,
        ignored by FLUX.1-schnell) unpacked to x0 [B, C, height/f, width/f] float32."""
        with cls.pipeline_prompt_kwargs(pipe, prompts, pipe._execution_device) as text:
            packed = pipe(
                **text,
                height=height,
                width=width,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=generator,
                output_type="latent",
                return_dict=False,
            )[0]
        return pipe._unpack_latents(packed, height, width, pipe.vae_scale_factor).float()

    @classmethod
    def pipeline_seq_len(cls, pipe: Any, height: int | None, width: int | None) -> int:
        """Image tokens (h/2) * (w/2) of the packed latent: what FluxPipeline feeds ``calculate_shift``."""
        side = pipe.default_sample_size * pipe.vae_scale_factor
        h, w = (height or side) // pipe.vae_scale_factor, (width or side) // pipe.vae_scale_factor
        return (h // 2) * (w // 2)

    @classmethod
    def pipeline_latents(cls, pipe: Any, latents: torch.Tensor, height: int | None, width: int | None) -> torch.Tensor:
        """FluxPipeline's packed tokens [B, N, 4C] -> x0 [B, C, h, w] (its ``_unpack_latents``)."""
        height = height or pipe.default_sample_size * pipe.vae_scale_factor
        width = width or pipe.default_sample_size * pipe.vae_scale_factor
        return pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)

    @classmethod
    def encode_images(
        cls, pipe: Any, images: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None = None
    ) -> torch.Tensor:
        """VAE encode [-1, 1] images -> ``(z - shift_factor) * scaling_factor`` [B, C, H/f, W/f] float32."""
        return vae_encode_images(pipe.vae, images, generator)

    @classmethod
    def decode_latents(cls, pipe: Any, x0: torch.Tensor) -> torch.Tensor:
        """x0 [B, C, h, w] -> images [B, 3, h*f, w*f] in [0, 1]."""
        return vae_decode_latents(pipe.vae, x0)

    @classmethod
    def pixel_multiple(cls, path_or_id: Any, local_files_only: bool = False) -> int | None:
        """VAE downsampling x 2 (2x2 packing): 16 for FLUX.1."""
        vae = read_component_config(path_or_id, "vae", local_files_only)
        blocks = (vae or {}).get("block_out_channels")
        return 2 ** (len(blocks) - 1) * 2 if blocks else None

    def _guidance(self, value: Any, batch_size: int, device: torch.device) -> torch.Tensor | None:
        if not self.has_guidance:
            if value is not None:
                raise ValueError(
                    "this Flux transformer has no guidance embedding (guidance_embeds=False, e.g. FLUX.1-schnell); "
                    "drop the 'guidance' cond key"
                )
            return None
        if value is None:
            raise ValueError(
                "this Flux transformer is guidance-distilled (guidance_embeds=True): pass cond 'guidance' [B] "
                "(training: FluxAdapter.with_guidance(data, generator) draws U[0, 7.5] per sample; sampling: e.g. 3.5)"
            )
        g = torch.as_tensor(value, dtype=torch.float32, device=device)
        if g.dim() == 0:
            g = g.expand(batch_size)
        if g.dim() != 1:
            raise ValueError(f"cond 'guidance' must be [B] (one value per sample), got shape {tuple(g.shape)}")
        return expand_batch(g, batch_size, "guidance")
