"""Peak memory of distilling from the teacher cache vs. with the whole pipeline loaded.

`scfm distill` on a diffusers teacher loads the transformer only: latents and text
embeddings come from the cache written by `scfm generate-data`, so the VAE and the text
encoders (T5-XXL alone is 9.5 GB in bf16 for Flux.1) never enter the training process. This
script measures that on a locally built random Flux pipeline whose T5 encoder is made large
(``--t5-width``, ``--t5-layers``: a few hundred MB) while the transformer stays tiny, so the
difference is visible on a laptop CPU.

Each variant runs in a fresh subprocess and reports its peak resident set size after the
imports (Linux VmHWM, reset through /proc/self/clear_refs once torch, diffusers and scfm are
imported, so the import peak does not mask the work) and that peak minus the RSS right after
the imports:

- ``python``: the interpreter with torch, diffusers and scfm imported (the floor),
- ``generate-data``: the full pipeline writing the cache (text encoders + VAE + transformer),
- ``distill (cache)``: `scfm distill` from the cache, the CLI path (transformer only),
- ``distill (full pipeline)``: the same distillation with the whole pipeline loaded in the
  process and its text encoders run once (what a training script that encodes prompts on the
  fly holds; safetensors weights are memory-mapped, so encoders that never run would not be
  resident on a CPU, while on a GPU they would occupy device memory as soon as moved there).

The cost of validation images (``validation_rows`` of the JSON):

- ``generate-data --validation-prompts``: the same generate-data command rerun with two
  validation prompts, which it encodes into the existing cache (no sample is regenerated),
- ``distill (cache, validate_every=1)``: ``distill (cache)`` with a teacher-vs-student grid after
  every step (the VAE loaded; the teacher rendered once, the student at every calibration step
  count); compare it with ``distill (cache)``, the same run with validation off.

    python bench/cache_memory.py                     # table + bench/results/cache_memory.json
    python bench/cache_memory.py --t5-width 512 --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD_PRELUDE = """
import json
from pathlib import Path
import torch, diffusers, transformers, scfm
import scfm.commands.cli, scfm.data.cache_batches, scfm.models.adapters, scfm.train.loop, scfm.models.flux
def status_mb(key):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(key + ":"))
    return int(line.split()[1]) / 1024  # kB -> MiB
Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak-RSS mark (VmHWM) after the imports
base_mb = status_mb("VmRSS")
"""

CHILDREN = {
    "python": "",
    "generate-data": """
from scfm.commands.cli import main
main(["generate-data", "--model", {model!r}, "--prompts", {prompts!r}, "--out", {cache!r}, "--steps", "2",
      "--buckets", "32x32,48x32", "--dtype", "fp32", "--device", "cpu", "--local-files-only"])
""",
    "distill (cache)": """
from scfm.commands.cli import main
main(["distill", {config!r}])
""",
    "distill (full pipeline)": """
from scfm.data.cache_batches import CacheBatches
from scfm.models.adapters import load_pipeline
from scfm.train.loop import distill
from scfm.train.yaml_config import load_config
config = load_config({config!r})
config.output_dir = None
pipe, adapter_cls = load_pipeline({model!r}, local_files_only=True)  # text encoders + VAE + transformer
# a loop that encodes prompts itself runs the encoders
adapter_cls.encode_prompts(pipe, ["a red cat", "a blue dog"], "cpu")
teacher = adapter_cls(pipe.transformer)
guidance_range = (config.guidance_min, config.guidance_max)
data = CacheBatches({cache!r}, config.batch_size, seed=config.seed, guidance_range=guidance_range)
distill(teacher, data, config, progress=False)
""",
    "generate-data --validation-prompts": """
from scfm.commands.cli import main
main(["generate-data", "--model", {model!r}, "--prompts", {prompts!r}, "--out", {cache!r}, "--steps", "2",
      "--buckets", "32x32,48x32", "--dtype", "fp32", "--device", "cpu", "--local-files-only",
      "--validation-prompts", "a green frog", "--validation-prompts", "a yellow bird"])
""",
    "distill (cache, validate_every=1)": """
from scfm.commands.cli import main
main(["distill", {config!r}, "--set", "validate_every=1", "--set", "output_dir=" + {validation_run!r}])
""",
}
VALIDATION_VARIANTS = ("generate-data --validation-prompts", "distill (cache, validate_every=1)")
"""The variants of ``validation_rows``; the others are ``rows``. All run in the order of CHILDREN."""


def run_child(name: str, **paths: str) -> dict[str, float]:
    """Run one variant in a fresh interpreter; returns its peak RSS and its RSS after the imports, in MiB."""
    code = (
        CHILD_PRELUDE
        + CHILDREN[name].format(**paths)
        + "\nprint(json.dumps({'peak_mb': status_mb('VmHWM'), 'base_mb': base_mb}))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(f"variant {name!r} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def component_sizes_mb(model: Path) -> dict[str, float]:
    """On-disk size of each pipeline component folder in MiB."""
    return {
        p.name: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 2**20
        for p in sorted(model.iterdir())
        if p.is_dir()
    }


def measure(t5_width: int, t5_layers: int, steps: int, workdir: Path) -> dict:
    from scfm.models.flux import FLUX_LORA_TARGETS
    from scfm.models.tiny import build_tiny_flux_pipeline

    model = build_tiny_flux_pipeline(workdir, t5_width=t5_width, t5_layers=t5_layers)
    prompts, cache = workdir / "prompts.txt", workdir / "cache"
    prompts.write_text("a red cat\na blue dog\n")
    config = workdir / "distill.yaml"
    values = {
        "teacher": f"diffusers:{model}",
        "data": f"cache:{cache}",
        "output_dir": str(workdir / "run"),
        "max_steps": steps,
        "batch_size": 2,
        "lora.rank": 4,
        "lora.alpha": 4.0,
        "lora.targets": list(FLUX_LORA_TARGETS),
        "plan.teacher_min": 4,
        "plan.teacher_max": 4,
        "logger": "jsonl",
        "local_files_only": True,
        "log_every": 1,
    }
    config.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in values.items()))
    paths = {"model": str(model), "prompts": str(prompts), "cache": str(cache), "config": str(config)}
    paths["validation_run"] = str(workdir / "run-validation")
    rows, validation_rows = [], []
    for name in CHILDREN:  # in order: generate-data writes the cache the distills read
        got = run_child(name, **paths)
        (validation_rows if name in VALIDATION_VARIANTS else rows).append(
            {
                "variant": name,
                "peak_rss_mb": round(got["peak_mb"], 1),
                "above_imports_mb": round(got["peak_mb"] - got["base_mb"], 1),
            }
        )
    grids = sorted(p.name for p in (workdir / "run-validation" / "validation").glob("*.png"))
    sizes = component_sizes_mb(model)
    by_name = {r["variant"]: r["peak_rss_mb"] for r in rows + validation_rows}
    return {
        "t5_width": t5_width,
        "t5_layers": t5_layers,
        "distill_steps": steps,
        "component_mb": {k: round(v, 1) for k, v in sizes.items()},
        "rows": rows,
        "saved_mb": round(by_name["distill (full pipeline)"] - by_name["distill (cache)"], 1),
        "validation_rows": validation_rows,
        "validation_grids": len(grids),
        "validation_mb": round(by_name["distill (cache, validate_every=1)"] - by_name["distill (cache)"], 1),
    }


def print_table(result: dict) -> None:
    print("pipeline on disk (MiB): " + ", ".join(f"{k} {v}" for k, v in result["component_mb"].items()))
    print(f"{'variant':36} {'peak RSS (MiB)':>15} {'above imports':>14}")
    for row in result["rows"] + result["validation_rows"]:
        print(f"{row['variant']:36} {row['peak_rss_mb']:15.1f} {row['above_imports_mb']:14.1f}")
    encoders_mb = sum(v for k, v in result["component_mb"].items() if k.startswith(("text_encoder", "vae")))
    print(
        f"distilling from the cache saves {result['saved_mb']:.1f} MiB of peak RSS "
        f"(text encoders + VAE: {encoders_mb:.1f} MiB on disk)"
    )
    print(
        f"validation images (validate_every=1, {result['validation_grids']} grids) add {result['validation_mb']:.1f} "
        f"MiB of peak RSS (VAE: {result['component_mb'].get('vae', 0.0):.1f} MiB on disk)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--t5-width", type=int, default=1536, help="T5 d_model (default 1536: about 300 MB of T5 weights with 8 layers)"
    )
    parser.add_argument("--t5-layers", type=int, default=8, help="T5 layers (default 8)")
    parser.add_argument("--steps", type=int, default=3, help="distillation steps per variant (default 3)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "cache_memory.json", help="JSON output"
    )
    parser.add_argument("--json", action="store_true", help="print only the JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="scfm-cache-memory-") as tmp:
        result = measure(args.t5_width, args.t5_layers, args.steps, Path(tmp))
    from scfm.fileio import atomic_write_json

    atomic_write_json(args.out, result)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
