"""SD3 / SD3.5 adapter: ``SD3Transformer2DModel`` behind ``forward(x, t, **cond) -> v``, with true CFG.

Conventions (diffusers 0.42): the scheduler is ``FlowMatchEulerDiscreteScheduler``
(``x_sigma = sigma eps + (1 - sigma) x0``, ``prev = sample + (sigma_next - sigma) * output``),
so the output is the spec's velocity ``eps - x0``; the pipeline passes
``timestep = sigma * 1000`` unscaled to the transformer, so the adapter passes ``t * 1000``.
The transformer patchifies [B, C, H, W] latents itself (H, W multiples of ``patch_size``).

cond keys: ``prompt_embeds`` [B, L, D], ``pooled_prompt_embeds`` [B, P] and, for CFG,
``negative_prompt_embeds`` [B or 1, L, D], ``negative_pooled_prompt_embeds`` [B or 1, P]
(the spec's default negative is the empty prompt ""; a single row broadcasts).

Classifier-free guidance, the spec's form and scale::

    v = v_c + w * (v_c - v_neg)        (w = guidance_scale, default 3.5)

This is the reference code's formula; it equals diffusers' ``StableDiffusion3Pipeline`` with
``guidance_scale = w + 1`` (the pipeline computes ``v_neg + s * (v_c - v_neg)``). The guided
velocity is computed in ONE transformer call on a doubled batch ``[x, x]`` with
``[positive, negative]`` embeddings.

``cfg_mode`` and what the distillation loop needs (targets are always guided):

- ``"runtime"`` (official): every call is guided, so teacher, EMA and student velocities all
  are ``v_c + w (v_c - v_neg)``. The student is this same module, so its prediction is the
  guided combination automatically, and gradients flow through both halves of the doubled
  batch. CFG stays at inference: sample the student with this adapter as is (2 passes/step
  in one doubled call).
- ``"baked"``: targets are guided (teacher and EMA calls as above) but the student predicts
  the guided velocity from the positive prompt alone in one pass. The loop must run the
  student prediction inside :meth:`student_pass` (= ``guided(False)``); at inference sample
  the student unguided too (``with adapter.guided(False): ...`` or set ``cfg_mode="none"``).
- ``"none"``: never guided (negative keys are then ignored); e.g. for a guidance-free model
  or for sampling a baked student.

:meth:`guided` is a context manager that turns guidance on or off for the calls inside it
(restored on exit, also on an exception).
"""

from __future__ import annotations

from typing import Any

import torch

from scfm.models.adapters import (
    VelocityAdapter,
    expand_batch,
    onetrainer_lora_key,
    register_adapter,
    vae_decode_latents,
    vae_encode_images,
)
from scfm.models.cfg import CFG_MODES, TrueCFG, combine_cfg  # noqa: F401  (CFG_MODES re-exported)
from scfm.models.counted_text import TEXT_LOG_COUNT, text_counts

SD3_LORA_TARGETS: tuple[str, ...] = (
    # embedders (the reference also lists "pos_embed.proj", a Conv2d: scfm's LoRA adapts Linear layers only)
    "time_text_embed.timestep_embedder.linear_1",
    "time_text_embed.timestep_embedder.linear_2",
    "time_text_embed.text_embedder.linear_1",
    "time_text_embed.text_embedder.linear_2",
    "context_embedder",
    # adaptive norms
    "norm1.linear",
    "norm2.linear",
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
    # MLP and output projection
    "ff.net.0.proj",
    "ff.net.2",
    "proj_out",
)
"""The official SCFM SD3.5 LoRA layers (scripts/train_sd3_scfm.sh of the reference code), Linear ones."""


@register_adapter("sd3")
class SD3Adapter(TrueCFG, VelocityAdapter):
    """``SD3Transformer2DModel`` as a velocity model on latents [B, C, H, W], with optional true CFG.

    ``guidance_scale`` is w in ``v_c + w (v_c - v_neg)``; ``cfg_mode`` is "runtime", "baked"
    or "none" (see the module docstring for how each maps onto distillation).
    """

    transformer_class_name = "SD3Transformer2DModel"
    pipeline_class_name = "StableDiffusion3Pipeline"
    default_lora_targets = SD3_LORA_TARGETS
    # the reference SD3 run: grad clip 2 and no resolution shift (dyn_prob=0), EMA restart every 2000 steps
    recommended_config = {
        "lora.targets": SD3_LORA_TARGETS,
        "grad_clip": 2.0,
        "plan.resolution_shift_prob": 0.0,
        "ema_restart_every": 2000,
        "lora.rank": 64,
        "lora.init": "gaussian",
        "weight_decay": 1e-4,
        "final_weights": "student",
        "lora.alpha": 64.0,
    }
    cond_keys = (
        "prompt_embeds",
        "pooled_prompt_embeds",
        "negative_prompt_embeds",
        "negative_pooled_prompt_embeds",
        TEXT_LOG_COUNT,
    )
    counted_text = True
    default_shift = 3.0
    """SD3's own scheduler shift and the official SCFM SD3 inference app's."""

    @classmethod
    def modelspec_architecture(cls, transformer_config: Any) -> str:
        """``stable-diffusion-3`` (sai_model_spec's family name; the size is not in the transformer config)."""
        return "stable-diffusion-3"

    @classmethod
    def comfyui_lora_key(cls, module_path: str) -> str:
        """OneTrainer's ``lora_transformer_<diffusers path>`` names, which ComfyUI maps for this family."""
        return onetrainer_lora_key(module_path)

    @classmethod
    def base_license(cls, base_model: str) -> dict[str, str]:
        """Stability AI's SD3 / SD3.5 releases: the Stability AI Community License; {} for other bases."""
        if not base_model.lower().startswith("stabilityai/stable-diffusion-3"):
            return {}
        return {
            "license": "other",
            "license_name": "stabilityai-ai-community",
            "license_link": f"https://huggingface.co/{base_model}/blob/main/LICENSE.md",
        }

    def __init__(self, transformer: torch.nn.Module, guidance_scale: float = 3.5, cfg_mode: str = "runtime") -> None:
        super().__init__(transformer)
        self._init_cfg(guidance_scale, cfg_mode)

    @property
    def patch_size(self) -> int:
        return int(self.transformer.config.patch_size)

    def seq_len(self, x: torch.Tensor) -> int:
        """Image tokens (H / patch) * (W / patch)."""
        p = self.patch_size
        return (x.shape[-2] // p) * (x.shape[-1] // p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, **cond: Any) -> torch.Tensor:
        self._check_cond(cond)
        with text_counts(self.transformer, cond) as text_cond:
            return self._velocity(x, t, text_cond)

    def _velocity(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        t = self._check_x_t(x, t)
        b, _, h, w = x.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"SD3 latents need height and width divisible by patch_size={p}, got {h}x{w}")
        for key in ("prompt_embeds", "pooled_prompt_embeds"):
            if key not in cond:
                raise ValueError(
                    f"SD3Adapter needs cond {key!r} (prompt_embeds [B, L, D], pooled_prompt_embeds [B, P]); "
                    f"got keys {sorted(cond)}"
                )
        dtype, device = self.dtype, x.device
        prompt = expand_batch(cond["prompt_embeds"], b, "prompt_embeds").to(device, dtype)
        pooled = expand_batch(cond["pooled_prompt_embeds"], b, "pooled_prompt_embeds").to(device, dtype)
        hidden, timestep = x.to(dtype), (t * 1000).to(dtype)
        if not self.cfg_active:
            return self._call(hidden, timestep, prompt, pooled).to(x.dtype)
        self._require_negative(cond, ("negative_prompt_embeds", "negative_pooled_prompt_embeds"))
        neg = expand_batch(cond["negative_prompt_embeds"], b, "negative_prompt_embeds").to(device, dtype)
        neg_pooled = expand_batch(cond["negative_pooled_prompt_embeds"], b, "negative_pooled_prompt_embeds").to(
            device, dtype
        )
        if neg.shape != prompt.shape or neg_pooled.shape != pooled.shape:
            raise ValueError(
                f"negative embeddings {tuple(neg.shape)}, {tuple(neg_pooled.shape)} "
                f"must match the prompt's {tuple(prompt.shape)}, "
                f"{tuple(pooled.shape)} (encode both with the same max_sequence_length)"
            )
        both = self._call(
            torch.cat([hidden, hidden]),
            torch.cat([timestep, timestep]),
            torch.cat([prompt, neg]),
            torch.cat([pooled, neg_pooled]),
        )
        return combine_cfg(both.to(x.dtype), self.guidance_scale)

    def _call(
        self, hidden: torch.Tensor, timestep: torch.Tensor, prompt: torch.Tensor, pooled: torch.Tensor
    ) -> torch.Tensor:
        return self.transformer(
            hidden_states=hidden,
            timestep=timestep,
            encoder_hidden_states=prompt,
            pooled_projections=pooled,
            return_dict=False,
        )[0]

    # ------------------------------------------------------------------ pipeline hooks
    @classmethod
    @torch.no_grad()
    def encode_prompts(cls, pipe: Any, prompts: list[str], device: torch.device | str) -> dict[str, torch.Tensor]:
        """Prompt embeddings [B, 77 + 256, D] and pooled [B, P] (two CLIPs + T5, the pipeline's
        ``encode_prompt``), plus the negative (empty prompt "") ones with ONE row: [1, 77 + 256, D], [1, P]."""
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompt=list(prompts), prompt_2=None, prompt_3=None, device=device, do_classifier_free_guidance=False
        )
        neg, _, neg_pooled, _ = pipe.encode_prompt(
            prompt=[""], prompt_2=None, prompt_3=None, device=device, do_classifier_free_guidance=False
        )
        return {
            "prompt_embeds": embeds,
            "pooled_prompt_embeds": pooled,
            "negative_prompt_embeds": neg,
            "negative_pooled_prompt_embeds": neg_pooled,
        }

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
        """StableDiffusion3Pipeline samples with true CFG against the empty prompt.

        ``guidance`` is scfm's w (``v_c + w (v_c - v_neg)``, the same number as the distillation
        config's ``cfg_scale``); the pipeline is called with ``guidance_scale = w + 1`` (its form is
        ``v_neg + s (v_c - v_neg)``), so w = 0 means no CFG. Returns x0 [B, C, h, w] float32.
        """
        with cls.pipeline_prompt_kwargs(pipe, prompts, pipe._execution_device) as text:
            latents = pipe(
                **text,
                height=height,
                width=width,
                num_inference_steps=steps,
                guidance_scale=float(guidance) + 1.0,
                generator=generator,
                output_type="latent",
                return_dict=False,
            )[0]
        return latents.float()

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
