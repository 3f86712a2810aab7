"""Cost of an SCFM step against a plain flow-matching LoRA step on the same model.

Both variants run through the same engine (`Distiller`): the plain fine-tune is SCFM with
``fm_ratio = 1`` (every row takes the target eps - x0, so no target passes run). Step times
are interleaved in one process (A, B, A, B, ...) after warm-up; we report medians and the
median of per-pair ratios. Peak memory: each variant runs in a fresh subprocess and
reports the peak of live tensor memory over its training steps (CUDA:
torch.cuda.max_memory_allocated; CPU: the same from the profiler's allocation events),
and on CPU also the peak resident set size (Linux VmHWM), which includes allocator and
oneDNN caches.

    python bench/cost.py            # table
    python bench/cost.py --json     # one JSON object
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from scfm.data.batches import DigitsBatches
from scfm.models.builtin import load_shipped_teacher
from scfm.train.engine import Distiller
from scfm.train.presets import digits_config

THEORETICAL = 5 / 3
"""t_skip = 2: two no-grad forwards on top of forward + backward (about 3 forward-equivalents)."""


def digits_engine(
    scfm: bool, batch: int, device: torch.device, target_precision: str = "bf16"
) -> tuple[Distiller, DigitsBatches]:
    """The `scfm demo` preset; ``target_precision`` 'bf16' is the preset, 'no' all-fp32 targets."""
    cfg = digits_config({"plan.fm_ratio": 0.0 if scfm else 1.0}, batch_size=batch, target_precision=target_precision)
    model = load_shipped_teacher("digits", device=str(device))
    return Distiller(model, cfg.validate(), device), DigitsBatches(batch, seed=0)


def flux_engine(scfm: bool, batch: int, device: torch.device) -> tuple[Distiller, Iterator[dict[str, torch.Tensor]]]:
    """The digits preset's schedule on :func:`~scfm.models.tiny.build_tiny_flux_adapter` (LoRA rank 16)."""
    from scfm.models.tiny import build_tiny_flux_adapter, tiny_flux_batches

    adapter = build_tiny_flux_adapter(device)
    cfg = digits_config(
        {
            "plan.fm_ratio": 0.0 if scfm else 1.0,
            "plan.resolution_shift_prob": 0.0,
            "lora.rank": 16,
            "lora.alpha": 16.0,
            "lora.targets": tuple(adapter.default_lora_targets),
        },
        batch_size=batch,
    )
    return Distiller(adapter, cfg.validate(), device), tiny_flux_batches(batch)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved_times(make, batch: int, steps: int, warmup: int, device: torch.device) -> dict:
    """Median step time of SCFM and plain FM, interleaved, and the median per-pair ratio."""
    scfm, scfm_data = make(True, batch, device)
    plain, plain_data = make(False, batch, device)
    times = {"scfm": [], "fm": []}
    it_s, it_p = iter(scfm_data), iter(plain_data)
    for i in range(warmup + steps):
        for name, engine, it in (("scfm", scfm, it_s), ("fm", plain, it_p)):
            batch_ = next(it)
            _sync(device)
            start = time.perf_counter()
            engine.train_step([batch_])
            _sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    ratios = [a / b for a, b in zip(times["scfm"], times["fm"])]
    return {
        "scfm_ms": 1e3 * statistics.median(times["scfm"]),
        "fm_ms": 1e3 * statistics.median(times["fm"]),
        "ratio": statistics.median(ratios),
        "steps": steps,
    }


def _peak_child(model: str, scfm: bool, batch: int, steps: int) -> dict:
    """Run in a subprocess: train `steps` steps and report peak memory.

    CUDA: ``torch.cuda.max_memory_allocated`` (live tensor bytes). CPU: the same quantity,
    the peak of live tensor bytes, from the profiler's allocation and free events (each op's
    self memory in time order), plus the process's peak RSS (VmHWM) as a second figure.
    RSS also counts what the allocator and oneDNN keep around (bf16 kernels, freed blocks),
    so it differs between variants even when the tensors alive at the peak are the same.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    make = digits_engine if model == "digits" else flux_engine
    engine, data = make(scfm, batch, device)
    it = iter(data)
    engine.train_step([next(it)])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(steps):
            engine.train_step([next(it)])
        return {
            "peak": torch.cuda.max_memory_allocated(),
            "increase": torch.cuda.max_memory_allocated() - base,
            "unit": "bytes (cuda)",
        }
    Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak-RSS mark (VmHWM)
    base_rss = _proc_status("VmRSS")
    live = _live_tensor_peak(lambda: [engine.train_step([next(it)]) for _ in range(steps)])
    rss = _proc_status("VmHWM")
    return {
        "peak": live,
        "unit": "bytes (peak live tensor memory during training steps)",
        "rss_peak": rss,
        "rss_increase": rss - base_rss,
    }


def _live_tensor_peak(work) -> int:
    """Peak of live tensor bytes allocated while ``work()`` runs (CPU profiler memory events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        work()
    deltas = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events())
    live = peak = 0
    for _, delta in deltas:
        live += delta
        peak = max(peak, live)
    return peak


def _proc_status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status (peak memory on CPU needs Linux)")


def peak_memory(model: str, batch: int, steps: int) -> dict:
    out = {}
    for name, scfm in (("scfm", True), ("fm", False)):
        cmd = [
            sys.executable,
            __file__,
            "--child",
            model,
            "--child-scfm",
            str(int(scfm)),
            "--batch",
            str(batch),
            "--steps",
            str(steps),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    out["ratio"] = out["scfm"]["peak"] / out["fm"]["peak"]
    if "rss_peak" in out["scfm"]:
        out["rss_ratio"] = out["scfm"]["rss_peak"] / out["fm"]["rss_peak"]
    return out


def sampling_times(batch: int, steps_list: tuple[int, ...] = (1, 2, 4, 8), repeats: int = 7) -> list[dict]:
    """Milliseconds per generated digit at n Euler steps, LoRA unfused (peft layers) and fused.

    The preset's LoRA (rank 32 on every block Linear) on the shipped teacher; weights do not
    change the cost, so the LoRA is the freshly attached one. Unfused and fused runs are
    interleaved; medians over ``repeats`` batches of ``batch`` digits.
    """
    import copy

    from scfm.sampling import sample
    from scfm.weights.lora import attach_lora, fuse_lora

    cfg = digits_config()
    unfused = attach_lora(load_shipped_teacher("digits"), cfg.lora).eval()
    fused = fuse_lora(copy.deepcopy(unfused)).eval()
    gen = torch.Generator().manual_seed(0)
    noise, labels = torch.randn(batch, 1, 8, 8, generator=gen), torch.arange(batch) % 10
    rows = []
    for n in steps_list:
        times = {"unfused": [], "fused": []}
        for i in range(repeats + 1):
            for name, model in (("unfused", unfused), ("fused", fused)):
                start = time.perf_counter()
                sample(model, noise, steps=n, label=labels)
                if i:  # the first round warms up
                    times[name].append(time.perf_counter() - start)
        med = {k: 1e3 * statistics.median(v) / batch for k, v in times.items()}
        rows.append(
            {
                "steps": n,
                "unfused_ms_per_image": round(med["unfused"], 4),
                "fused_ms_per_image": round(med["fused"], 4),
                "unfused_over_fused": round(med["unfused"] / med["fused"], 3),
                "batch": batch,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--flux", action="store_true", help="also the tiny Flux transformer (needs diffusers)")
    parser.add_argument("--sampling-batch", type=int, default=100, help="digits per timed sampling batch")
    parser.add_argument("--sampling-repeats", type=int, default=7, help="timed sampling batches per step count")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-scfm", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_peak_child(args.child, bool(args.child_scfm), args.batch, args.steps)))
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, {device}",
        "theoretical_ratio": round(THEORETICAL, 4),
    }
    digits = interleaved_times(digits_engine, args.batch, args.steps, args.warmup, device)
    fp32 = interleaved_times(lambda s, b, d: digits_engine(s, b, d, "no"), args.batch, args.steps, args.warmup, device)
    mem = peak_memory("digits", args.batch, max(3, args.steps // 4))
    result.update(
        {
            "scfm_over_fm_step_time": round(digits["ratio"], 4),
            "scfm_over_fm_peak_memory": round(mem["ratio"], 4),
            "scfm_over_fm_peak_rss": round(mem["rss_ratio"], 4) if "rss_ratio" in mem else None,
            "scfm_fp32_targets_over_fm_step_time": round(fp32["ratio"], 4),
            "digits": {**digits, "memory": mem, "batch": args.batch},
            "digits_fp32_targets": {**fp32, "batch": args.batch},
            "digits_sampling": sampling_times(args.sampling_batch, repeats=args.sampling_repeats),
        }
    )
    if args.flux:
        flux = interleaved_times(flux_engine, 2, args.steps, args.warmup, device)
        result["flux_tiny"] = {**flux, "memory": peak_memory("flux", 2, max(3, args.steps // 4)), "batch": 2}
    if args.json:
        print(json.dumps(result))
        return
    print(f"machine: {result['machine']}")
    print(
        f"{'model':20} {'scfm ms':>9} {'fm ms':>9} {'ratio':>7} {'theory':>7} "
        f"{'peak mem ratio':>15} {'peak RSS ratio':>15}"
    )
    for name in ("digits", "digits_fp32_targets", "flux_tiny"):
        if name in result:
            r = result[name]
            mem = (
                f"{r['memory']['ratio']:15.3f} {r['memory'].get('rss_ratio', float('nan')):15.3f}"
                if "memory" in r
                else f"{'':>15}"
            )
            print(f"{name:20} {r['scfm_ms']:9.1f} {r['fm_ms']:9.1f} {r['ratio']:7.3f} {THEORETICAL:7.3f} {mem}")
    print(
        f"\nsampling, digits, batch {args.sampling_batch}: "
        f"{'steps':>5} {'unfused ms/img':>15} {'fused ms/img':>13} {'ratio':>6}"
    )
    for r in result["digits_sampling"]:
        print(
            f"{'':28} {r['steps']:5d} {r['unfused_ms_per_image']:15.3f} "
            f"{r['fused_ms_per_image']:13.3f} {r['unfused_over_fused']:6.2f}"
        )


if __name__ == "__main__":
    main()
