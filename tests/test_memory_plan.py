"""The memory plan (bench/memory_plan.py) against a real scfm training step: its simulation of a tiny Flux
transformer predicts the live-tensor peak the CPU reaches, so its tables for the real models can be trusted."""

import gc
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.diffusers

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 0.15
"""Issue 14: the plan's numbers agree with measured live-tensor peaks within 15%."""
TINY_FLUX = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 2,
    "num_single_layers": 2,
    "attention_head_dim": 32,
    "num_attention_heads": 4,
    "joint_attention_dim": 64,
    "pooled_projection_dim": 32,
    "guidance_embeds": True,
    "axes_dims_rope": (8, 12, 12),
}
"""A guidance-distilled Flux transformer of width 128 (2 double + 2 single blocks), as scfm.models.tiny builds."""


def load_plan():
    """bench/memory_plan.py as a module (bench/ is not on the test path)."""
    if "memory_plan" not in sys.modules:
        spec = importlib.util.spec_from_file_location("memory_plan", ROOT / "bench/memory_plan.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["memory_plan"] = module
        spec.loader.exec_module(module)
    return sys.modules["memory_plan"]


def tiny_flux_spec(plan):
    """The tiny transformer under the FLUX.1-dev preset (bf16 weights, bf16 autocast, fp32 LoRA on every official
    target), 32 text tokens."""
    return plan.ModelSpec("tiny-flux", "flux", TINY_FLUX, ROOT / "configs/flux-dev.yaml", text_tokens=32)


def measured_step(plan, spec, setting) -> tuple[int, int]:
    """(bytes live before, peak bytes live during) the second training step of a real :class:`Distiller` on the CPU.

    Measured from the profiler's allocation events (``profile_memory``): every allocation and free of the CPU
    allocator, in time order, from before the model is built, so nothing alive is missed; a free counts only when
    its block was allocated inside the session (blocks of earlier tests are not ours). That is the allocator's own
    bookkeeping, independent of the plan's method: it sees allocations inside kernels, the autocast cache and what
    the autograd graph holds, whatever Python objects wrap them. The second step is the steady state (the AdamW
    moments exist).
    """
    from diffusers import FluxTransformer2DModel
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile, record_function

    from scfm.models.flux import FluxAdapter
    from scfm.train.engine import Distiller

    config = spec.distill_config(setting.rank)
    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        transformer = FluxTransformer2DModel(**spec.config).to(plan.DTYPES[config.model_dtype])
        adapter = FluxAdapter(transformer).eval()
        if setting.checkpointing:
            adapter.enable_gradient_checkpointing()
        engine = Distiller(adapter, config, torch.device("cpu"), seq_len_fn=adapter.seq_len)
        generator = torch.Generator().manual_seed(0)
        assert engine.train_step([plan.make_batch(spec, setting, "cpu", generator)]) is not None
        engine.opt.zero_grad(set_to_none=True)
        gc.collect()
        with record_function("measured step"):
            assert engine.train_step([plan.make_batch(spec, setting, "cpu", generator)]) is not None
    events, window = [], None
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        if event.tag == _EventType.Allocation:
            events.append((event.start_time_ns, event.extra_fields.alloc_size, event.extra_fields.ptr))
        elif event.name == "measured step":
            window = (event.start_time_ns, event.end_time_ns)
    blocks: dict[int, int] = {}
    live, before, peak = 0, None, 0
    for time_ns, nbytes, ptr in sorted(events):
        if before is None and time_ns >= window[0]:
            before = live
        if nbytes > 0:
            blocks[ptr] = nbytes
            live += nbytes
        elif ptr in blocks:
            live -= blocks.pop(ptr)
        if window[0] <= time_ns <= window[1]:
            peak = max(peak, live)
    return before, peak


@pytest.mark.parametrize("checkpointing", [False, True], ids=["no_checkpointing", "checkpointing"])
def test_plan_predicts_the_measured_peak_of_a_tiny_flux_step_within_15_percent(checkpointing):
    plan = load_plan()
    spec = tiny_flux_spec(plan)
    setting = plan.Setting(rank=16, width=256, height=256, batch=2, checkpointing=checkpointing)
    persistent, peak = measured_step(plan, spec, setting)
    predicted, _ = plan.simulate_step(spec, setting, cuda=False)
    report = (
        f"measured persistent {persistent} peak {peak}; predicted persistent {predicted.persistent} "
        f"peak {predicted.peak}"
    )
    assert abs(predicted.persistent / persistent - 1) <= TOLERANCE, report
    assert abs(predicted.peak / peak - 1) <= TOLERANCE, report
    assert abs(predicted.step / (peak - persistent) - 1) <= TOLERANCE, report  # the part that grows with the work
    assert predicted.step > 0.5 * predicted.persistent  # activations matter in this test, not only weights


def tiny_flux_counts(plan):
    """(the tiny Flux preset's config at LoRA rank 16, the plan's counts of it built on the meta device)."""
    from scfm.weights.lora import attach_lora

    spec = tiny_flux_spec(plan)
    config = spec.distill_config(16)
    adapter = plan.build_meta_adapter(spec, config)
    attach_lora(adapter, config.lora)
    return config, plan.count_parameters(adapter, torch.bfloat16)


def test_counts_come_from_the_model_definition():
    from diffusers import FluxTransformer2DModel

    from scfm.weights.lora import attach_lora

    plan = load_plan()
    config, counts = tiny_flux_counts(plan)
    real = FluxTransformer2DModel(**TINY_FLUX)
    assert counts.base_params == sum(p.numel() for p in real.parameters())
    assert counts.base_bytes == 2 * counts.base_params
    real_lora = attach_lora(real, config.lora)
    assert counts.lora_params == sum(p.numel() for n, p in real_lora.named_parameters() if "lora_" in n)
    bf16 = plan.base_bytes(counts, "none")
    assert plan.base_bytes(counts, "int8") < 0.55 * bf16
    assert plan.base_bytes(counts, "nf4") < plan.base_bytes(counts, "fp8") < 0.6 * bf16


@pytest.mark.parametrize(
    ("model", "billions"), [("flux-dev", 11.90), ("sd35-large", 8.06), ("wan-1.3b", 1.42)], ids=str
)
def test_shipped_configs_build_the_published_transformers(model, billions):
    plan = load_plan()
    spec = plan.MODELS[model]
    adapter = plan.build_meta_adapter(spec, spec.distill_config(64))
    assert sum(p.numel() for p in adapter.parameters()) / 1e9 == pytest.approx(billions, abs=0.01)


def test_cuda_rules_give_fp32_norms_and_bf16_linears_under_autocast():
    plan = load_plan()
    x = torch.randn(2, 8, dtype=torch.bfloat16)
    weight = torch.randn(4, 8, dtype=torch.bfloat16)
    with plan.cuda_autocast_rules(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.nn.functional.layer_norm(x, (8,)).dtype == torch.float32
        assert torch.nn.functional.linear(x.float(), weight).dtype == torch.bfloat16
    assert torch.nn.functional.layer_norm(x, (8,)).dtype == torch.bfloat16


def test_int8_base_and_8bit_adamw_formulas_equal_what_the_real_run_holds():
    """The plan's formula rows (an int8 base, bitsandbytes' 8-bit AdamW state) against a real tiny Flux quantized
    by scfm (bf16, the preset's dtype) and a real optimizer after one step: equal to the byte."""
    pytest.importorskip("torchao")
    pytest.importorskip("bitsandbytes")
    from diffusers import FluxTransformer2DModel

    from scfm.models.flux import FluxAdapter
    from scfm.train.optimizers import make_optimizer
    from scfm.weights.lora import attach_lora, lora_named_parameters
    from scfm.weights.quantize import base_bytes, quantize_base

    plan = load_plan()
    config, counts = tiny_flux_counts(plan)

    real = FluxAdapter(FluxTransformer2DModel(**TINY_FLUX).to(torch.bfloat16))
    names = quantize_base(real, "int8", FluxAdapter.quantization_exclude)
    assert "transformer.proj_out" not in names and "transformer.single_transformer_blocks.0.proj_out" in names
    assert base_bytes(real) == plan.base_bytes(counts, "int8")
    assert base_bytes(real) < 0.55 * plan.base_bytes(counts, "none")

    attach_lora(real, config.lora)
    params = [p for _, p in lora_named_parameters(real)]
    opt = make_optimizer("adamw8bit", params, 1e-4, 0.0)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    state = [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    assert sum(t.numel() * t.element_size() for t in state) == counts.lora_8bit_state
