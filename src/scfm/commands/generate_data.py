"""``scfm generate-data``: cache teacher samples (or captioned images) as latents + text embeddings."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from scfm.commands._common import add_device_flag, add_dtype_flag, add_local_files_flag, new_command


def register(sub: Any) -> None:
    g = new_command(
        sub, "generate-data", help="cache teacher samples (or captioned images) as latents + text embeddings"
    )
    g.add_argument("--model", required=True, help="diffusers pipeline folder or Hub id (Flux / SD3 / Wan)")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--prompts", type=Path, help='.txt (one prompt a line) or .jsonl ({"prompt": ..., "seed": optional int})'
    )
    src.add_argument(
        "--images", type=Path, help="folder of images with same-stem .txt captions (few-shot mode; no teacher sampling)"
    )
    g.add_argument("--out", type=Path, required=True, help="cache folder (rerun to resume or extend)")
    g.add_argument("--steps", type=int, default=32, help="teacher sampling steps (default 32)")
    g.add_argument(
        "--guidance",
        type=float,
        default=3.5,
        help="embedded guidance (Flux.1-dev) or CFG w of v_c + w (v_c - v_neg) (true-CFG families; the pipeline's "
        "guidance_scale = w + 1) (default 3.5)",
    )
    g.add_argument("--buckets", default="512x512", help="WIDTHxHEIGHT sizes, comma separated (default 512x512)")
    g.add_argument(
        "--per-prompt", type=int, default=1, help="samples per prompt and bucket (default 1; ignored with --images)"
    )
    g.add_argument("--shard-size", type=int, default=64, help="samples per shard file (default 64)")
    g.add_argument("--batch-size", type=int, default=4, help="prompts per pipeline call (default 4)")
    g.add_argument("--seed", type=int, default=0, help="base seed of the per-sample seeds (default 0)")
    g.add_argument("--previews", action="store_true", help="also write previews/<id>.png")
    add_dtype_flag(g, default="bf16")
    add_device_flag(g)
    g.add_argument(
        "--cpu-offload", action="store_true", help="diffusers model CPU offload (for GPUs too small for the pipeline)"
    )
    add_local_files_flag(g)
    g.add_argument(
        "--max-samples",
        type=int,
        default=None,
        help="stop after this many new samples (default all; rerun to continue)",
    )
    g.add_argument(
        "--validation-prompts",
        action="append",
        default=None,
        metavar="FILE_OR_TEXT",
        help="prompts for scfm distill's validation images (validate_every): one prompt file (.txt / .jsonl, like "
        "--prompts) or prompt texts (repeat the flag); their embeddings and noise seeds are stored in the cache. "
        "Rerunning the command that made a cache with this flag adds them without regenerating any sample",
    )
    g.set_defaults(handler=run)


PROMPT_FILE_SUFFIXES = (".txt", ".jsonl")


def validation_source(values: list[str] | None) -> Path | tuple[str, ...] | None:
    """``--validation-prompts`` values -> a prompt file (one value naming a file or a .txt / .jsonl path) or texts."""
    if not values:
        return None
    files = [v for v in values if Path(v).suffix.lower() in PROMPT_FILE_SUFFIXES or Path(v).is_file()]
    if files and len(values) > 1:
        raise ValueError(
            f"--validation-prompts {files[0]!r} is a prompt file: give one prompt file, or prompt texts (repeat the "
            "flag), not both"
        )
    return Path(values[0]) if files else tuple(values)


def run(args: argparse.Namespace) -> int:
    from scfm.data.cache_inputs import parse_buckets
    from scfm.data.cache_writer import GenerateConfig, generate_cache

    translated = {"buckets", "progress", "validation_prompts"}
    flags = {f.name for f in dataclasses.fields(GenerateConfig)} - translated  # one flag per field
    config = GenerateConfig(
        buckets=parse_buckets(args.buckets),
        validation_prompts=validation_source(args.validation_prompts),
        **{name: getattr(args, name) for name in flags},
    )
    s = generate_cache(config)
    left = s.total - s.skipped - s.generated
    print(f"{args.out}: {s.generated} sample(s) generated, {s.skipped} already cached, {left} left")
    if s.validation_prompts:
        print(f"{args.out}: {s.validation_prompts} validation prompt(s) encoded (for validate_every in scfm distill)")
    return 0
