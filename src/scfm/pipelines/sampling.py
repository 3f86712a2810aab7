"""Sample a diffusers pipeline (Flux / SD3) with a distilled LoRA on scfm's own time grid.

The distilled student is sampled with plain Euler on the grid :func:`scfm.objective.time_grid`
(``n`` steps, fixed shift ``s``; SCFM_SPEC "Sampling the student"). diffusers pipelines build
their own schedule: ``FlowMatchEulerDiscreteScheduler.set_timesteps(sigmas=...)`` shifts any
given sigmas AGAIN, by ``shift`` (SD3) or by the resolution shift ``mu`` that ``FluxPipeline``
always computes (``use_dynamic_shifting=True`` in FLUX.1's scheduler config). So
:func:`sample_pipeline` swaps in a copy of the scheduler with ``use_dynamic_shifting=False``,
``shift=1.0`` and no Karras/exponential/beta conversion or terminal stretch (an identity on
sigmas), passes the first ``n`` grid points as ``sigmas`` (the scheduler appends 0), and puts the
user's scheduler back afterwards, even on an exception. The scheduler's step is then exactly
the spec's Euler step ``x + (t_next - t) v``.

Guidance, in scfm's convention for the family (the same numbers as the distillation config):

- Flux.1-dev: the embedded guidance value (default 3.5), given to the pipeline as
  ``guidance_scale``; ignored by FLUX.1-schnell.
- SD3: w in ``v_c + w (v_c - v_neg)`` (default 3.5, a runtime-CFG student); the pipeline gets
  ``guidance_scale = w + 1``. A baked-CFG student is sampled with w = 0 (one pass a step).

The LoRA scale goes through ``joint_attention_kwargs={"scale": ...}`` (diffusers scales every
peft LoRA layer of the transformer for the call). Written for the image pipelines (Flux, SD3);
families with true CFG (``adapter.true_cfg``) get ``w + 1``, others the value as is.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from scfm.models.adapters import VelocityAdapter, adapter_for_pipeline, is_flow_matching_scheduler
from scfm.objective.grids import resolution_mu, time_grid

OUTPUTS = ("images", "latents")


@contextmanager
def identity_sigma_scheduler(pipe: Any, sigmas: list[float] | None = None) -> Iterator[None]:
    """Inside the block ``pipe.scheduler`` is a FlowMatchEulerDiscreteScheduler that uses given sigmas as is.

    A pipeline whose ``__call__`` takes no ``sigmas`` (WanPipeline) gets them pinned here:
    its ``set_timesteps(n)`` then uses ``sigmas`` (n = len(sigmas)). A flow-matching scheduler
    of another class (Wan's ``UniPCMultistepScheduler(prediction_type="flow_prediction")``) is
    replaced by a plain Euler one for the block.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    saved = pipe.scheduler
    if not is_flow_matching_scheduler(saved.config):
        raise ValueError(
            f"pipe.scheduler is a {type(saved).__name__}; scfm samples flow-matching pipelines "
            "(FlowMatch*Scheduler or prediction_type='flow_prediction')"
        )
    if "FlowMatch" in type(saved).__name__:
        euler = FlowMatchEulerDiscreteScheduler.from_config(
            saved.config,
            use_dynamic_shifting=False,
            shift=1.0,
            shift_terminal=None,
            use_karras_sigmas=False,
            use_exponential_sigmas=False,
            use_beta_sigmas=False,
            invert_sigmas=False,
            stochastic_sampling=False,
        )
    else:
        euler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=saved.config.num_train_timesteps, shift=1.0)
    if sigmas is not None:
        euler.set_timesteps = functools.partial(euler.set_timesteps, sigmas=sigmas)
    pipe.scheduler = euler
    try:
        yield
    finally:
        pipe.scheduler = saved


def pipeline_guidance_kwargs(adapter_cls: type[VelocityAdapter], guidance: float | None) -> dict[str, float]:
    """``guidance_scale`` for the pipeline call from scfm's guidance convention (see the module docstring)."""
    g = adapter_cls.default_guidance if guidance is None else float(guidance)
    if g < 0:
        raise ValueError(f"guidance={g} must be >= 0")
    return {"guidance_scale": adapter_cls.pipeline_guidance_scale(g)}


def resolve_shift(
    adapter_cls: type[VelocityAdapter], pipe: Any, shift: float | str | None, height: int | None, width: int | None
) -> float:
    """The fixed shift of the sampling grid: ``None`` -> the family's ``default_shift``; ``"auto"`` ->
    the resolution shift ``e^mu`` for the image's token count (SCFM_SPEC "Time grids"); a number as is."""
    if shift is None:
        return float(adapter_cls.default_shift)
    if shift == "auto":
        return math.exp(resolution_mu(adapter_cls.pipeline_seq_len(pipe, height, width)))
    if isinstance(shift, str) or not shift > 0:
        raise ValueError(f"shift={shift!r} must be a number > 0 or 'auto' (the resolution shift)")
    return float(shift)


def lora_scale_kwargs(pipe: Any, scale: float) -> dict[str, dict[str, float]]:
    """The pipeline's attention-kwargs argument carrying the LoRA scale (``joint_attention_kwargs``: Flux, SD3)."""
    params = inspect.signature(type(pipe).__call__).parameters
    for name in ("joint_attention_kwargs", "attention_kwargs"):
        if name in params:
            return {name: {"scale": float(scale)}}
    raise ValueError(f"{type(pipe).__name__} takes no attention kwargs, so a LoRA scale cannot be passed to it")


@contextmanager
def _prompt_kwargs(adapter_cls: type[VelocityAdapter], pipe: Any, prompts: list[str]) -> Iterator[dict[str, Any]]:
    """``prompt=prompts``, or for families with counted text their embeddings cut where that is exact
    (:meth:`VelocityAdapter.pipeline_prompt_kwargs`: the same images to float rounding, far fewer text tokens)."""
    if not adapter_cls.counted_text:
        yield {"prompt": list(prompts)}
        return
    with adapter_cls.pipeline_prompt_kwargs(pipe, list(prompts), pipe._execution_device) as text:
        yield text


@torch.no_grad()
def sample_pipeline(
    pipe: Any,
    prompts: list[str],
    steps: int,
    lora_scale: float = 1.0,
    shift: float | str | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    height: int | None = None,
    width: int | None = None,
    *,
    guidance: float | None = None,
    output: str = "images",
    num_frames: int | None = None,
) -> torch.Tensor:
    """Sample ``pipe`` (with or without a loaded LoRA) by Euler on scfm's grid ``time_grid(steps, shift)``.

    Args:
        pipe: a loaded FluxPipeline / StableDiffusion3Pipeline (e.g. from
            :func:`scfm.models.adapters.load_pipeline`, LoRA loaded with :func:`load_lora`).
        prompts: B prompts.
        steps: Euler steps n >= 1 (= transformer calls; SD3 with CFG: doubled batch each).
        lora_scale: multiplies every LoRA delta of the transformer (1 = as trained; few-step
            samplers often like 1-1.75). No effect without a LoRA.
        shift: fixed shift s of the grid (1 = the plain linspace grid); None: the family's
            ``default_shift`` (what its students are trained for); "auto": the resolution shift.
        generator: noise generator(s): one, or one per prompt (diffusers semantics; CPU
            generators make the noise device independent).
        height, width: image size in pixels (default: the pipeline's default size).
        guidance: scfm's convention (Flux: embedded value, default 3.5; SD3: CFG w, default
            3.5, pipeline guidance_scale = w + 1; 0 = unguided).
        output: "images" -> [B, 3, H, W] float32 in [0, 1] on the CPU; "latents" -> x0
            [B, C, h, w] float32 in the adapter convention (unpacked, normalized), as
            ``scfm.sample(distilled_adapter, noise, steps, ...)`` returns it. Video pipelines
            (Wan): images [B, F, 3, H, W], latents [B, C, F, h, w].
        num_frames: video pipelines: frames (4k + 1; default the adapter's ``num_frames``).
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be a positive integer")
    if output not in OUTPUTS:
        raise ValueError(f"output={output!r} must be one of {OUTPUTS}")
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of strings")
    adapter_cls = adapter_for_pipeline(pipe)
    params = inspect.signature(type(pipe).__call__).parameters
    shift = resolve_shift(adapter_cls, pipe, shift, height, width)
    sigmas = time_grid(steps, shift, dtype=torch.float64)[:-1].tolist()  # the scheduler appends t = 0
    kwargs: dict[str, Any] = dict(
        height=height,
        width=width,
        num_inference_steps=steps,
        generator=generator,
        output_type="latent" if output == "latents" else "pt",
        return_dict=False,
        **lora_scale_kwargs(pipe, lora_scale),
        **pipeline_guidance_kwargs(adapter_cls, guidance),
    )
    if "num_frames" in params:
        kwargs["num_frames"] = int(num_frames or adapter_cls.num_frames)
    if "sigmas" in params:
        kwargs["sigmas"] = sigmas
    with (
        identity_sigma_scheduler(pipe, sigmas=None if "sigmas" in params else sigmas),
        _prompt_kwargs(adapter_cls, pipe, prompts) as text,
    ):
        out = pipe(**text, **kwargs)[0]
    if output == "images":
        return out.float().cpu()
    return adapter_cls.pipeline_latents(pipe, out, height, width).float()
