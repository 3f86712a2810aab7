"""GPU cost of SCFM on a full-size Flux.1-dev-architecture transformer (random weights).

Measures, in one process on one model: SCFM step time and peak memory against a plain
flow-matching LoRA step (the same engine with fm_ratio = 1), bf16, 512 px (64x64 latents,
1024 image tokens, 512 text tokens), gradient checkpointing, LoRA rank 64 on the official
targets, batch 1 and 4; then Euler sampling latency at 3 and 8 steps with the LoRA unfused
and fused; then the memory savers (``base_quantization`` int8 / fp8 / nf4 with ``optimizer: adamw8bit``, with and
without ``offload_ema``) on a fresh model each: base bytes, memory held, peak memory and step time at batch 1.
``--tiny`` runs the same code on a tiny config (the test suite does, on CPU; fp8 and nf4 rows say why they skip).

    python bench/gpu.py                 # on a GPU; prints a table and writes bench/results/gpu.json
    python bench/gpu.py --tiny --json   # CPU smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path

import torch

FULL = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
TINY = dict(
    FULL,
    num_layers=1,
    num_single_layers=1,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=16,
    axes_dims_rope=(4, 6, 6),
)
FULL_SHAPES = dict(latent=64, text_len=512)
TINY_SHAPES = dict(latent=8, text_len=8)


def build(tiny: bool, device: torch.device, dtype: torch.dtype):
    from diffusers import FluxTransformer2DModel

    from scfm.models.flux import FluxAdapter

    torch.manual_seed(0)
    with torch.device(device):
        transformer = FluxTransformer2DModel(**(TINY if tiny else FULL)).to(dtype)
    return FluxAdapter(transformer).eval()


def batch_of(size: int, tiny: bool, cfg: dict, device: torch.device, gen: torch.Generator) -> dict:
    shapes = TINY_SHAPES if tiny else FULL_SHAPES
    c = cfg["in_channels"] // 4
    return {
        "x0": torch.randn(size, c, shapes["latent"], shapes["latent"], generator=gen).to(device),
        "prompt_embeds": torch.randn(size, shapes["text_len"], cfg["joint_attention_dim"], generator=gen).to(device),
        "pooled_prompt_embeds": torch.randn(size, cfg["pooled_projection_dim"], generator=gen).to(device),
        "guidance": (7.5 * torch.rand(size, generator=gen)).to(device),
    }


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak(device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")


def _reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def step_costs(engine, make_batch, sizes, steps: int, warmup: int, device) -> list[dict]:
    """Interleaved SCFM / plain-FM step medians for each batch size, and peak memory of each."""
    scfm_plan = engine.step_fn.plan_cfg
    fm_plan = dataclasses.replace(scfm_plan, fm_ratio=1.0)
    rows = []
    for size in sizes:
        times, peaks = {"scfm": [], "fm": []}, {}
        for name, plan in (("fm", fm_plan), ("scfm", scfm_plan)):  # peak memory, each variant alone
            engine.step_fn.plan_cfg = plan
            _reset_peak(device)
            engine.train_step([make_batch(size)])
            _sync(device)
            peaks[name] = _peak(device)
        for i in range(warmup + steps):
            for name, plan in (("scfm", scfm_plan), ("fm", fm_plan)):
                engine.step_fn.plan_cfg = plan
                batch = make_batch(size)
                _sync(device)
                start = time.perf_counter()
                engine.train_step([batch])
                _sync(device)
                if i >= warmup:
                    times[name].append(time.perf_counter() - start)
        ratios = [a / b for a, b in zip(times["scfm"], times["fm"])]
        rows.append(
            {
                "batch": size,
                "scfm_s": statistics.median(times["scfm"]),
                "fm_s": statistics.median(times["fm"]),
                "time_ratio": statistics.median(ratios),
                "scfm_peak_gib": peaks["scfm"],
                "fm_peak_gib": peaks["fm"],
                "memory_ratio": peaks["scfm"] / peaks["fm"] if device.type == "cuda" else float("nan"),
            }
        )
    engine.step_fn.plan_cfg = scfm_plan
    return rows


def sampling_latency(model, make_batch, step_counts, repeats: int, device) -> list[dict]:
    from scfm.sampling import sample

    batch = make_batch(1)
    cond = {k: v for k, v in batch.items() if k != "x0"}
    noise = torch.randn_like(batch["x0"])
    rows = []
    for fused in (False, True):
        if fused:
            model.fuse(1.0)
        for n in step_counts:
            times = []
            for _ in range(repeats + 1):
                _sync(device)
                start = time.perf_counter()
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    sample(model.model if fused else model, noise, steps=n, **cond)
                _sync(device)
                times.append(time.perf_counter() - start)
            rows.append({"steps": n, "fused": fused, "seconds": statistics.median(times[1:])})
    return rows


SAVER_SETTINGS = (
    ("int8 base + 8-bit AdamW", "int8", "adamw8bit", False),
    ("int8 base + 8-bit AdamW + CPU EMAs", "int8", "adamw8bit", True),
    ("fp8 base + 8-bit AdamW", "fp8", "adamw8bit", False),
    ("nf4 base + 8-bit AdamW", "nf4", "adamw8bit", False),
    ("nf4 base + 8-bit AdamW + CPU EMAs", "nf4", "adamw8bit", True),
)
"""(row, base_quantization, optimizer, offload_ema) of the memory-saver rows, all with gradient checkpointing."""


def _allocated(device) -> float:
    return torch.cuda.memory_allocated() / 2**30 if device.type == "cuda" else float("nan")


def saver_rows(tiny: bool, steps: int, warmup: int, device: torch.device) -> list[dict]:
    """One row per :data:`SAVER_SETTINGS` entry at batch 1: a fresh model quantized by scfm, the live bytes of its
    base, GPU memory held before the first step, peak memory and median SCFM step time over ``steps`` steps after
    ``warmup``. A setting this machine cannot run (fp8 before compute capability 8.9, nf4 on a CPU) gets the reason."""
    import gc

    from scfm.weights.quantize import base_bytes, quantization_problem

    rows = []
    for name, quantization, optimizer, offload in SAVER_SETTINGS:
        problem = quantization_problem(quantization, device)
        if problem:
            rows.append({"setting": name, "skipped": problem})
            continue
        engine = make_engine(tiny, device, base_quantization=quantization, optimizer=optimizer, offload_ema=offload)
        gen = torch.Generator().manual_seed(0)
        _reset_peak(device)
        held = _allocated(device)
        times = []
        for i in range(warmup + steps):
            batch = batch_of(1, tiny, TINY if tiny else FULL, device, gen)
            _sync(device)
            start = time.perf_counter()
            engine.train_step([batch])
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
        rows.append(
            {
                "setting": name,
                "base_gib": base_bytes(engine.model) / 2**30,
                "held_gib": held,
                "peak_gib": _peak(device),
                "step_s": statistics.median(times),
            }
        )
        del engine
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def make_engine(tiny: bool, device: torch.device, **fields):
    """A Distiller on a fresh Flux transformer (full size, or the tiny one) with checkpointing, LoRA rank 64 on the
    official targets (4 when tiny), bf16 autocast on CUDA; ``fields`` are further DistillConfig fields."""
    from scfm.models.flux import FluxAdapter
    from scfm.objective.plans import PlanConfig
    from scfm.train.config import DistillConfig
    from scfm.train.engine import Distiller
    from scfm.weights.lora import LoraSpec

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    adapter = build(tiny, device, dtype)
    if device.type == "cuda" or tiny:
        adapter.transformer.enable_gradient_checkpointing()
    cfg = DistillConfig(
        lora=LoraSpec(
            targets=FluxAdapter.default_lora_targets, rank=64 if not tiny else 4, alpha=64.0 if not tiny else 4.0
        ),
        plan=PlanConfig(resolution_shift_prob=0.1),
        mixed_precision="bf16" if device.type == "cuda" else "no",
        batch_size=1,
        **fields,
    ).validate()
    return Distiller(adapter, cfg, device, seq_len_fn=adapter.seq_len)


def run(tiny: bool, steps: int, warmup: int, repeats: int) -> dict:

    device = torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    engine = make_engine(tiny, device)
    adapter = engine.model
    gen = torch.Generator().manual_seed(0)
    model_cfg = TINY if tiny else FULL
    make_batch = lambda size: batch_of(size, tiny, model_cfg, device, gen)  # noqa: E731
    costs = step_costs(engine, make_batch, (1, 4) if not tiny else (1, 2), steps, warmup, device)
    result = engine.result()
    latency = sampling_latency(result, make_batch, (3, 8), repeats, device)
    params = sum(p.numel() for n, p in adapter.named_parameters() if "lora_" not in n)
    del engine, result, adapter
    savers = saver_rows(tiny, steps, warmup, device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    return {
        "device": f"{device.type}: {name}",
        "torch": torch.__version__,
        "tiny": tiny,
        "parameters": params,
        "dtype": str(dtype),
        "theoretical_ratio": 5 / 3,
        "steps": costs,
        "sampling": latency,
        "savers": savers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny config on CPU (smoke test)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    args = parser.parse_args()
    result = run(args.tiny, args.steps, args.warmup, args.repeats)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['device']}  params {result['parameters'] / 1e9:.2f} B  {result['dtype']}")
    print(f"{'batch':>5} {'scfm s':>8} {'fm s':>8} {'ratio':>6} {'scfm GiB':>9} {'fm GiB':>8} {'mem ratio':>9}")
    for r in result["steps"]:
        print(
            f"{r['batch']:5d} {r['scfm_s']:8.3f} {r['fm_s']:8.3f} {r['time_ratio']:6.3f} "
            f"{r['scfm_peak_gib']:9.2f} {r['fm_peak_gib']:8.2f} {r['memory_ratio']:9.3f}"
        )
    for r in result["sampling"]:
        print(f"sampling {r['steps']} steps {'fused' if r['fused'] else 'lora '}: {r['seconds']:.3f} s/image")
    print(f"\nmemory savers, batch 1, checkpointing ({'tiny' if result['tiny'] else '512 px'}):")
    print(f"{'setting':36} {'base GiB':>9} {'held GiB':>9} {'peak GiB':>9} {'step s':>7}")
    for r in result["savers"]:
        if "skipped" in r:
            print(f"{r['setting']:36} skipped: {r['skipped']}")
        else:
            print(
                f"{r['setting']:36} {r['base_gib']:9.4g} {r['held_gib']:9.2f} {r['peak_gib']:9.2f} {r['step_s']:7.3f}"
            )


if __name__ == "__main__":
    main()
