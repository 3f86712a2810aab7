"""Counted text: a padded text sequence cut to its distinct prefix plus ONE padding token, exactly.

Pipelines pad the T5 prompt to a fixed length (Flux 512 tokens, SD3 256). When every padding
position has the same embedding (a T5 encoder without position information, as in the
miniature digits pipelines) and text tokens carry no position in the transformer (Flux text
ids are zero; SD3 embeds only image positions), attention over ``n`` identical padding keys
equals attention over ONE such key with ``log n`` added to its logit. :func:`compress_text`
cuts a batch of embeddings to the shortest prefix after which every row is constant and returns
those log-multiplicities; :func:`counted_attention` installs attention processors that add
them. The result equals the full-length computation to float rounding and costs a fraction:
at 4 image tokens a transformer call on 512 text tokens is ~19x dearer than on 7.

Real T5 encoders have relative position biases, so their padding embeddings differ and
:func:`compact_text_cond` cuts nothing (and changes nothing): the mechanism only engages where
it is exact. Adapters opt in with ``counted_text = True``; the ``text_log_count`` cond key
(``[1, L]``, shared by every row) carries the multiplicities through caches, the training loop
and sampling.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

TEXT_LOG_COUNT = "text_log_count"
"""The cond key of the log-multiplicities [1, L] of the text tokens (one row shared by the batch)."""
MIN_SAVING = 2
"""Cut only when it removes at least this many tokens (a shorter cut is not worth a processor swap)."""


def compress_text(embeds: torch.Tensor, atol: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut text embeddings [P, L, D] whose every row ends in a run of identical tokens to [P, k + 1, D].

    k is the shortest prefix after which all rows are constant (to ``atol``); token k stands for the
    ``L - k`` identical ones. Returns the cut embeddings and the log-multiplicities [k + 1] (0 for the
    prefix, ``log(L - k)`` for the last token) for :func:`counted_attention`.
    """
    same = (embeds - embeds[:, -1:]).abs().amax(dim=(0, 2)) <= atol  # [L]: position equals the last one in every row
    k = embeds.shape[1] - 1
    while k > 0 and bool(same[k - 1]):
        k -= 1
    log_count = torch.zeros(k + 1)
    log_count[k] = math.log(embeds.shape[1] - k)
    return embeds[:, : k + 1].contiguous(), log_count


def _flux_counted_processor(text_log_count: torch.Tensor):
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

    class CountedFluxAttnProcessor(FluxAttnProcessor):
        """Flux attention with ``log(multiplicity)`` added to the logits of the text keys (text comes first)."""

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
            total = hidden_states.shape[1] + (0 if encoder_hidden_states is None else encoder_hidden_states.shape[1])
            bias = torch.zeros(total, dtype=hidden_states.dtype, device=hidden_states.device)
            bias[: text_log_count.shape[0]] = text_log_count.to(bias)
            return super().__call__(
                attn, hidden_states, encoder_hidden_states, bias.view(1, 1, 1, -1), image_rotary_emb
            )

    return CountedFluxAttnProcessor()


def _sd3_counted_processor(text_log_count: torch.Tensor):
    import torch.nn.functional as F
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    class CountedJointAttnProcessor(JointAttnProcessor2_0):
        """SD3 joint attention (``JointAttnProcessor2_0``) with ``log(multiplicity)`` added to the logits of the
        text keys (text comes after the image)."""

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
            b, n = hidden_states.shape[:2]
            heads = attn.heads

            def split(x):
                return x.view(b, -1, heads, x.shape[-1] // heads).transpose(1, 2)

            q, k, v = split(attn.to_q(hidden_states)), split(attn.to_k(hidden_states)), split(attn.to_v(hidden_states))
            if attn.norm_q is not None:
                q = attn.norm_q(q)
            if attn.norm_k is not None:
                k = attn.norm_k(k)
            cq = split(attn.add_q_proj(encoder_hidden_states))
            ck = split(attn.add_k_proj(encoder_hidden_states))
            cv = split(attn.add_v_proj(encoder_hidden_states))
            if attn.norm_added_q is not None:
                cq = attn.norm_added_q(cq)
            if attn.norm_added_k is not None:
                ck = attn.norm_added_k(ck)
            q, k, v = torch.cat([q, cq], dim=2), torch.cat([k, ck], dim=2), torch.cat([v, cv], dim=2)
            bias = torch.zeros(k.shape[2], dtype=q.dtype, device=q.device)
            bias[n:] = text_log_count.to(bias)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.view(1, 1, 1, -1))
            out = out.transpose(1, 2).reshape(b, -1, heads * q.shape[-1]).to(q.dtype)
            hidden, context = out[:, :n], out[:, n:]
            if not attn.context_pre_only:
                context = attn.to_add_out(context)
            hidden = attn.to_out[1](attn.to_out[0](hidden))
            return hidden, context

    return CountedJointAttnProcessor()


@contextmanager
def counted_attention(transformer: nn.Module, text_log_count: torch.Tensor) -> Iterator[nn.Module]:
    """Inside: every attention of ``transformer`` (Flux or SD3) adds ``text_log_count`` [L] (from
    :func:`compress_text`) to the logits of the text keys. The original processors are restored on exit."""
    name = type(transformer).__name__
    if name == "FluxTransformer2DModel":
        processor = _flux_counted_processor(text_log_count)
    elif name == "SD3Transformer2DModel":
        processor = _sd3_counted_processor(text_log_count)
    else:
        raise ValueError(f"counted attention is written for Flux and SD3 transformers, not {name}")
    original = dict(transformer.attn_processors)
    transformer.set_attn_processor(processor)
    try:
        yield transformer
    finally:
        transformer.set_attn_processor(original)


def compact_text_cond(cond: dict[str, Any], min_saving: int = MIN_SAVING) -> dict[str, Any]:
    """``cond`` with ``prompt_embeds`` [B, L, D] (and ``negative_prompt_embeds`` [1 or B, L, D], cut jointly)
    shortened by :func:`compress_text` and ``text_log_count`` [1, k + 1] added; ``cond`` itself when the cut
    would save fewer than ``min_saving`` tokens, when it already carries counts, or when it has no text."""
    embeds = cond.get("prompt_embeds")
    if TEXT_LOG_COUNT in cond or not isinstance(embeds, torch.Tensor) or embeds.dim() != 3:
        return cond
    negative = cond.get("negative_prompt_embeds")
    table = embeds if negative is None else torch.cat([embeds, negative.to(embeds.dtype)])
    cut, log_count = compress_text(table.float())
    if embeds.shape[1] - cut.shape[1] < min_saving:
        return cond
    keep = cut.shape[1]
    out = dict(cond, prompt_embeds=embeds[:, :keep].contiguous())
    if negative is not None:
        out["negative_prompt_embeds"] = negative[:, :keep].contiguous()
    out[TEXT_LOG_COUNT] = log_count.unsqueeze(0)
    return out


@contextmanager
def text_counts(transformer: nn.Module, cond: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Inside: ``transformer`` runs :func:`counted_attention` when ``cond`` has ``text_log_count``; yields
    ``cond`` without that key (for the adapter's own use)."""
    counts = cond.get(TEXT_LOG_COUNT)
    rest = {k: v for k, v in cond.items() if k != TEXT_LOG_COUNT}
    if counts is None:
        yield rest
        return
    with counted_attention(transformer, counts.reshape(-1)):
        yield rest
