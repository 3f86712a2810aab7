"""Quality of the miniature diffusers pipelines (``flux-digits``, ``sd3-digits``) sampled through the pipeline.

    OMP_NUM_THREADS=1 python bench/miniature_quality.py                  # both shipped pipelines
    python bench/miniature_quality.py --model flux-digits --folder DIR   # a freshly trained folder
    python bench/miniature_quality.py --shifts 1,1.65,3                  # + a sampling-shift sweep at 32 steps
    python bench/miniature_quality.py --check-full-text 20               # + compressed vs full-length text check
    python bench/miniature_quality.py --literal 20                       # + pipe(prompt=[...]) itself, 20 digits

For each pipeline it prints the VAE's reconstruction FD (the 360 held-out digits encoded and
decoded, against the real held-out FD floor), then the teacher's digits FD and class accuracy
at 1, 2, 4, 8 and 32 steps: ``pipe(prompt_embeds=..., height=8, width=8, num_inference_steps=n,
output_type="pt")``, 100 samples per digit with the canonical prompt "a handwritten digit <d>",
decoded by the pipeline's VAE and turned into 8x8 gray digits in [-1, 1]. The prompts are
encoded by the pipeline's ``encode_prompt`` and passed compressed (``scfm.models.counted_text``:
identical to the full 512 / 256 padded T5 tokens to float rounding; ``--check-full-text N``
measures that on N digits at 4 steps; ``--literal N`` compares N digits
at 32 steps with the plain ``pipe(prompt=[...], ...)`` call on the same noise). Flux is sampled
at its embedded guidance 3.5 (the pipeline default), SD3 at every CFG w of ``--sd3-guidance``
(pipeline guidance_scale w + 1).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def _load(name: str, folder: Path | None):
    from scfm.models.adapters import load_pipeline
    from scfm.models.miniature import shipped_pipeline_path

    pipe, _ = load_pipeline(folder or shipped_pipeline_path(name), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _labels(per_class: int) -> torch.Tensor:
    return torch.arange(10).repeat_interleave(per_class)


def _with_shift(pipe, shift: float):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, use_dynamic_shifting=False, shift=shift)


def _literal(pipe, labels: torch.Tensor, guidance: float, seed: int) -> torch.Tensor:
    """32 steps of the plain pipeline call on prompt strings (full-length text); gray digits [N, 1, 8, 8]."""
    from scfm.models.adapters import adapter_for_pipeline
    from scfm.models.miniature import IMAGE_SIZE, digits_prompt, rgb_to_digits

    images = pipe(
        prompt=[digits_prompt(int(d)) for d in labels],
        height=IMAGE_SIZE,
        width=IMAGE_SIZE,
        num_inference_steps=32,
        guidance_scale=adapter_for_pipeline(pipe).pipeline_guidance_scale(guidance),
        generator=torch.Generator().manual_seed(seed),
        output_type="pt",
    ).images
    return rgb_to_digits(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="both", choices=("both", "flux-digits", "sd3-digits"))
    parser.add_argument("--folder", type=Path, default=None, help="a pipeline folder instead of the shipped one")
    parser.add_argument("--steps", default="1,2,4,8,32")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=999)
    parser.add_argument("--flux-guidance", type=float, default=3.5)
    parser.add_argument("--sd3-guidance", default="0,1,3.5", help="CFG w values (pipeline guidance_scale = w + 1)")
    parser.add_argument("--shifts", default="", help="fixed sampling shifts to sweep at 32 steps (e.g. 1,1.65,3)")
    parser.add_argument("--check-full-text", type=int, default=0, help="also sample N digits with full-length text")
    parser.add_argument("--literal", type=int, default=0, help="compare N digits at 32 steps with pipe(prompt=[...])")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from scfm.data.digits import load_digits_split
    from scfm.eval.metrics import DigitsEvaluator
    from scfm.models.miniature import digits_rgb, pipeline_digits
    from scfm.train.vae import reconstruct

    evaluator = DigitsEvaluator()
    held = load_digits_split("heldout")
    print(f"real held-out digits (360): FD {evaluator.fd_floor():.3f}")
    names = ("flux-digits", "sd3-digits") if args.model == "both" else (args.model,)
    steps = [int(s) for s in args.steps.split(",") if s]
    labels = _labels(args.per_class)
    for name in names:
        pipe = _load(name, args.folder if args.model != "both" else None)
        recon = reconstruct(pipe.vae, digits_rgb(held.images)).mean(dim=1, keepdim=True)
        rec = evaluator.evaluate(recon, held.labels)
        print(
            f"\n{name}: VAE reconstructions of the 360 held-out digits: FD {rec.fd:.3f}, class acc {rec.class_acc:.4f}"
        )
        guidances = [args.flux_guidance] if name == "flux-digits" else [float(w) for w in args.sd3_guidance.split(",")]
        kind = "embedded guidance" if name == "flux-digits" else "CFG w"
        for g in guidances:
            cells = []
            for n in steps:
                start = time.perf_counter()
                gen = torch.Generator().manual_seed(args.seed)
                scores = evaluator.evaluate(pipeline_digits(pipe, labels, n, g, gen), labels)
                cells.append(
                    f"{n}: FD {scores.fd:6.3f} acc {scores.class_acc:.3f} ({time.perf_counter() - start:.0f} s)"
                )
            print(f"  {kind} {g}: " + " | ".join(cells))
        if args.shifts:
            original = pipe.scheduler
            g = guidances[0]
            for shift in [float(s) for s in args.shifts.split(",")]:
                pipe.scheduler = _with_shift(pipe, shift)
                gen = torch.Generator().manual_seed(args.seed)
                scores = evaluator.evaluate(pipeline_digits(pipe, labels, 32, g, gen), labels)
                print(
                    f"  fixed sampling shift {shift}, 32 steps, {kind} {g}: "
                    f"FD {scores.fd:.3f} acc {scores.class_acc:.3f}"
                )
            pipe.scheduler = original
        if args.literal:
            few = _labels(max(1, args.literal // 10))
            start = time.perf_counter()
            literal = _literal(pipe, few, guidances[0], args.seed)
            seconds = time.perf_counter() - start
            ours = pipeline_digits(pipe, few, 32, guidances[0], torch.Generator().manual_seed(args.seed))
            print(
                f"  pipe(prompt=[...]) itself vs compressed, {few.numel()} digits at 32 steps, {kind} {guidances[0]}: "
                f"max |diff| {(literal - ours).abs().max().item():.2e}, class acc "
                f"{evaluator.evaluate(literal, few).class_acc:.3f} ({seconds:.0f} s)"
            )
        if args.check_full_text:
            few = _labels(max(1, args.check_full_text // 10))
            a = pipeline_digits(pipe, few, 4, guidances[-1], torch.Generator().manual_seed(1), compressed=True)
            start = time.perf_counter()
            b = pipeline_digits(pipe, few, 4, guidances[-1], torch.Generator().manual_seed(1), compressed=False)
            print(
                f"  full-length text vs compressed, {few.numel()} digits at 4 steps: max |diff| "
                f"{(a - b).abs().max().item():.2e} (full text {time.perf_counter() - start:.1f} s)"
            )


if __name__ == "__main__":
    main()
