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

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch

from scfm.models.adapters import VelocityAdapter, expand_batch, register_adapter

CFG_MODES = ("runtime", "baked", "none")

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
class SD3Adapter(VelocityAdapter):
    """``SD3Transformer2DModel`` as a velocity model on latents [B, C, H, W], with optional true CFG.

    ``guidance_scale`` is w in ``v_c + w (v_c - v_neg)``; ``cfg_mode`` is "runtime", "baked"
    or "none" (see the module docstring for how each maps onto distillation).
    """

    transformer_class_name = "SD3Transformer2DModel"
    default_lora_targets = SD3_LORA_TARGETS
    # the reference SD3 run: grad clip 2 and no resolution shift (dyn_prob=0), EMA restart every 2000 steps
    recommended_config = {
        "lora_targets": SD3_LORA_TARGETS,
        "grad_clip": 2.0,
        "resolution_shift_prob": 0.0,
        "ema_restart_every": 2000,
        "lora_rank": 64,
        "lora_alpha": 64.0,
    }
    cond_keys = ("prompt_embeds", "pooled_prompt_embeds", "negative_prompt_embeds", "negative_pooled_prompt_embeds")

    def __init__(self, transformer: torch.nn.Module, guidance_scale: float = 3.5, cfg_mode: str = "runtime") -> None:
        super().__init__(transformer)
        if cfg_mode not in CFG_MODES:
            raise ValueError(f"cfg_mode={cfg_mode!r} must be one of {CFG_MODES}")
        self.guidance_scale = float(guidance_scale)
        self.cfg_mode = cfg_mode
        self._guidance_on = True

    @property
    def patch_size(self) -> int:
        return int(self.transformer.config.patch_size)

    @property
    def cfg_active(self) -> bool:
        """Whether a call right now returns the guided velocity."""
        return self.cfg_mode != "none" and self._guidance_on

    @contextmanager
    def guided(self, enabled: bool) -> Iterator[None]:
        """Turn CFG on or off for the calls inside the block (``cfg_mode="none"`` stays off)."""
        saved = self._guidance_on
        self._guidance_on = bool(enabled)
        try:
            yield
        finally:
            self._guidance_on = saved

    def student_pass(self) -> AbstractContextManager:
        """Baked CFG: the student prediction is unguided (it learns the guided target in one pass)."""
        return self.guided(False) if self.cfg_mode == "baked" else nullcontext()

    def seq_len(self, x: torch.Tensor) -> int:
        """Image tokens (H / patch) * (W / patch)."""
        p = self.patch_size
        return (x.shape[-2] // p) * (x.shape[-1] // p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, **cond: Any) -> torch.Tensor:
        self._check_cond(cond)
        t = self._check_x_t(x, t)
        b, _, h, w = x.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"SD3 latents need height and width divisible by patch_size={p}, got {h}x{w}")
        for key in ("prompt_embeds", "pooled_prompt_embeds"):
            if key not in cond:
                raise ValueError(f"SD3Adapter needs cond {key!r} (prompt_embeds [B, L, D], pooled_prompt_embeds [B, P]); got keys {sorted(cond)}")
        dtype, device = self.dtype, x.device
        prompt = expand_batch(cond["prompt_embeds"], b, "prompt_embeds").to(device, dtype)
        pooled = expand_batch(cond["pooled_prompt_embeds"], b, "pooled_prompt_embeds").to(device, dtype)
        hidden, timestep = x.to(dtype), (t * 1000).to(dtype)
        if not self.cfg_active:
            return self._call(hidden, timestep, prompt, pooled).to(x.dtype)
        missing = [k for k in ("negative_prompt_embeds", "negative_pooled_prompt_embeds") if k not in cond]
        if missing:
            raise ValueError(
                f"SD3Adapter with cfg_mode={self.cfg_mode!r} needs cond {missing} (encode the negative prompt, by default '', "
                "with the pipeline's encode_prompt; one row broadcasts), or build the adapter with cfg_mode='none'"
            )
        neg = expand_batch(cond["negative_prompt_embeds"], b, "negative_prompt_embeds").to(device, dtype)
        neg_pooled = expand_batch(cond["negative_pooled_prompt_embeds"], b, "negative_pooled_prompt_embeds").to(device, dtype)
        if neg.shape != prompt.shape or neg_pooled.shape != pooled.shape:
            raise ValueError(
                f"negative embeddings {tuple(neg.shape)}, {tuple(neg_pooled.shape)} must match the prompt's {tuple(prompt.shape)}, "
                f"{tuple(pooled.shape)} (encode both with the same max_sequence_length)"
            )
        both = self._call(
            torch.cat([hidden, hidden]), torch.cat([timestep, timestep]), torch.cat([prompt, neg]), torch.cat([pooled, neg_pooled])
        ).to(x.dtype)
        v_c, v_neg = both.chunk(2)
        return v_c + self.guidance_scale * (v_c - v_neg)

    def _call(self, hidden: torch.Tensor, timestep: torch.Tensor, prompt: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        return self.transformer(
            hidden_states=hidden,
            timestep=timestep,
            encoder_hidden_states=prompt,
            pooled_projections=pooled,
            return_dict=False,
        )[0]
