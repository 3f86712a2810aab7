"""``scfm eval``: CLIP score, dFID and FID of a distilled text-to-image LoRA against its teacher.

Glue between the command line, the diffusers pipeline code (:mod:`scfm.pipelines.sampling`,
:func:`scfm.models.adapters.load_pipeline`) and the metric driver
(:func:`scfm.eval.t2i.evaluate_text_to_image`). Everything that can fail cheaply (prompt file,
reference folder, CLIP and Inception weights, model folder, LoRA file) is checked before the
pipeline is loaded and before any image is generated.

- Student: the pipeline with the LoRA at ``--lora-scale`` (default: the run's calibrated scale per step
  count, else 1), Euler on scfm's grid with ``--shift`` (default: the family's).
- Teacher: the same pipeline with the LoRA scaled to 0 (the base weights), sampled with the
  pipeline's own scheduler (``--teacher-sampler pipeline``, as users run the model: Flux's
  resolution shift, SD3's shift 3) or with scfm's Euler grid (``euler``, ``--teacher-shift``).
- Noise: prompt i gets CPU generator ``--seed + i`` for teacher and student alike, so paired
  samples start from the same noise whatever ``--batch-size`` is.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from scfm.commands._common import (
    add_device_flag,
    add_dtype_flag,
    add_lora_scale_flag,
    add_model_source_flags,
    add_shift_flag,
    check_positive,
    device_and_dtype,
    new_command,
    resolve_model_source,
    shift_value,
)

_DESCRIPTION = """\
Score a distilled LoRA against its teacher on a prompt file, at each --steps count:
CLIP score of student samples, dFID (student vs the teacher's --teacher-steps samples for the
same prompts and seeds), FID vs a --reference folder, plus the teacher at the same step counts.
Writes OUT/t2i_metrics.json, OUT/t2i_grid_steps{n}.png (teacher vs student) and
OUT/t2i_metrics_vs_steps.png. Models, weights, prompts and the reference folder are checked
before any image is generated.
"""

TEACHER_SAMPLERS = ("pipeline", "euler")


def register(sub: Any) -> None:
    """Register ``scfm eval`` on the subparsers object ``sub`` of the main parser."""
    from scfm.eval.t2i import DEFAULT_CLIP

    e = new_command(
        sub,
        "eval",
        help="text-to-image evaluation: CLIP score, dFID vs the teacher and FID vs real images, per student step count",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_source_flags(e, lora_help="the distilled LoRA, diffusers format (.safetensors, from scfm export)")
    e.add_argument(
        "--prompts", type=Path, required=True, help=".txt (one prompt per line) or .jsonl ({'prompt': ...} per line)"
    )
    e.add_argument("--max-prompts", type=int, default=None, help="use only the first N prompts (default: all)")
    e.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8], help="student step counts (default: 1 2 4 8)")
    e.add_argument(
        "--teacher-steps",
        type=int,
        default=32,
        help="steps of the teacher reference samples, dFID's reference (default: 32)",
    )
    e.add_argument(
        "--teacher-sampler",
        choices=TEACHER_SAMPLERS,
        default="pipeline",
        help="teacher sampling: the pipeline's own scheduler, or Euler on scfm's grid with --teacher-shift "
        "(default: pipeline)",
    )
    e.add_argument(
        "--teacher-shift",
        type=shift_value,
        default=None,
        help="grid shift of the teacher with --teacher-sampler euler, or 'auto' (default: the student's shift)",
    )
    e.add_argument(
        "--no-teacher-baseline",
        action="store_true",
        help="skip the teacher at each student step count (saves sum(--steps) teacher steps)",
    )
    add_lora_scale_flag(e)
    add_shift_flag(e)
    e.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="student guidance in scfm's convention (Flux: embedded value; SD3: CFG w, 0 for a baked-CFG student; "
        "default 3.5)",
    )
    e.add_argument(
        "--teacher-guidance", type=float, default=None, help="teacher guidance, same convention (default 3.5)"
    )
    e.add_argument(
        "--height", type=int, default=None, help="image height in pixels (default: the pipeline's default size)"
    )
    e.add_argument(
        "--width", type=int, default=None, help="image width in pixels (default: the pipeline's default size)"
    )
    e.add_argument(
        "--clip",
        default=DEFAULT_CLIP,
        help="CLIP for CLIP scores: a local save_pretrained folder (model + processor) or a hub id; 'none' skips "
        f"(default: {DEFAULT_CLIP})",
    )
    e.add_argument(
        "--fid-features",
        default="inception",
        help="FID features: 'inception' (needs torch-fidelity), 'clip' (FD-CLIP, the --clip model), "
        "'module:function' or 'file.py:function' returning an nn.Module [B,3,H,W] in [0,1] -> [B,D], or 'none' "
        "(default: inception)",
    )
    e.add_argument(
        "--inception-weights",
        type=Path,
        default=None,
        help="pt_inception-2015-12-05-6726825d.pth (or a .safetensors copy) for --fid-features inception "
        "(default: torch-fidelity downloads it)",
    )
    e.add_argument(
        "--reference", type=Path, default=None, help="folder of real .png/.jpg images for FID (default: no FID column)"
    )
    e.add_argument("--batch-size", type=int, default=4, help="prompts per pipeline call (default: 4)")
    e.add_argument("--seed", type=int, default=0, help="prompt i uses noise seed SEED + i (default: 0)")
    e.add_argument(
        "--grid-prompts",
        type=int,
        default=4,
        help="prompts shown in each teacher-vs-student grid (default: 4; 0: no grids)",
    )
    add_device_flag(e)
    add_dtype_flag(e)
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    e.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output folder: t2i_metrics.json, t2i_grid_steps{n}.png, t2i_metrics_vs_steps.png",
    )
    e.set_defaults(handler=run)


def make_generators(
    pipe: Any, args: argparse.Namespace, lora_scales: dict[int, float] | None = None
) -> tuple[Any, Any, int, int]:
    """``(teacher_generate, student_generate, teacher_nfe_per_step, student_nfe_per_step)`` for the driver.

    Both callables return images [B, 3, H, W] float32 in [0, 1] on the CPU; prompt j of a
    batch called with ``seed`` gets a CPU generator seeded ``seed + j``. The student's LoRA scale
    is ``--lora-scale``, else ``lora_scales[steps]`` (a run's calibration), else 1.
    """
    import torch

    from scfm.models.adapters import adapter_for_pipeline
    from scfm.pipelines.sampling import lora_scale_kwargs, pipeline_guidance_kwargs, sample_pipeline

    adapter_cls = adapter_for_pipeline(pipe)
    guidance = adapter_cls.default_guidance if args.guidance is None else args.guidance
    teacher_guidance = adapter_cls.default_guidance if args.teacher_guidance is None else args.teacher_guidance
    teacher_shift = args.shift if args.teacher_shift is None else args.teacher_shift

    def noise(seed: int, n: int) -> list[torch.Generator]:
        return [torch.Generator("cpu").manual_seed(seed + j) for j in range(n)]

    def student(prompts: list[str], steps: int, seed: int) -> torch.Tensor:
        return sample_pipeline(
            pipe,
            prompts,
            steps,
            lora_scale=args.lora_scale if args.lora_scale is not None else (lora_scales or {}).get(steps, 1.0),
            shift=args.shift,
            generator=noise(seed, len(prompts)),
            height=args.height,
            width=args.width,
            guidance=guidance,
        )

    @torch.no_grad()
    def teacher(prompts: list[str], steps: int, seed: int) -> torch.Tensor:
        if args.teacher_sampler == "euler":
            return sample_pipeline(
                pipe,
                prompts,
                steps,
                lora_scale=0.0,
                shift=teacher_shift,
                generator=noise(seed, len(prompts)),
                height=args.height,
                width=args.width,
                guidance=teacher_guidance,
            )
        out = pipe(
            prompt=list(prompts),
            height=args.height,
            width=args.width,
            num_inference_steps=steps,
            generator=noise(seed, len(prompts)),
            **lora_scale_kwargs(pipe, 0.0),
            output_type="pt",
            return_dict=False,
            **pipeline_guidance_kwargs(adapter_cls, teacher_guidance),
        )[0]
        return out.float().cpu()

    return teacher, student, adapter_cls.passes_per_step(teacher_guidance), adapter_cls.passes_per_step(guidance)


def run(args: argparse.Namespace) -> int:
    """The ``scfm eval`` command; returns the exit code."""
    from scfm.eval import t2i

    prompts = t2i.load_prompts(args.prompts, args.max_prompts)
    fid_on = args.fid_features != "none"
    t2i.check_eval_plan(prompts, args.steps, args.teacher_steps, args.batch_size, args.grid_prompts, need_two=fid_on)
    if args.reference is not None:
        if not fid_on:
            raise ValueError("--reference needs FID features, but --fid-features is 'none'")
        t2i.list_reference_images(args.reference)
    source = resolve_model_source(args, lora_required=True)
    check_positive(height=args.height, width=args.width)
    device, dtype = device_and_dtype(args.device, args.dtype)

    from scfm.models.adapters import adapter_class_for, load_pipeline
    from scfm.pipelines.lora import load_lora

    adapter_class_for(source.model, source.local_files_only)  # the pipeline's configs, before any weights are read
    clip, features = t2i.load_scorers(
        None if args.clip == "none" else args.clip,
        args.fid_features if fid_on else None,
        args.inception_weights,
        device,
        local_files_only=True if source.local_files_only else None,
    )
    with tempfile.TemporaryDirectory(prefix="scfm-eval-") as tmp:
        lora = source.lora_file(Path(tmp))
        pipe, _ = load_pipeline(source.model, torch_dtype=dtype, local_files_only=source.local_files_only)
        pipe.to(device)
        load_lora(pipe, lora)
    pipe.set_progress_bar_config(disable=True)  # the driver shows one bar per set instead of one per call
    teacher, student, teacher_nfe, student_nfe = make_generators(pipe, args, source.lora_scales)
    config = {
        "model": source.model,
        "lora": str(source.lora) if source.lora else None,
        "run": str(source.run) if source.run else None,
        "weights": source.weights if source.run else None,
        "lora_scale": args.lora_scale if args.lora_scale is not None else {"calibrated": source.lora_scales},
        "shift": args.shift if args.shift is not None else "family default",
        "teacher_sampler": args.teacher_sampler,
        "teacher_shift": args.teacher_shift if args.teacher_sampler == "euler" else None,
        "guidance": args.guidance,
        "teacher_guidance": args.teacher_guidance,
        "dtype": str(dtype).removeprefix("torch."),
        "device": str(device),
    }
    result = t2i.evaluate_text_to_image(
        teacher,
        student,
        prompts,
        args.steps,
        args.out,
        teacher_steps=args.teacher_steps,
        clip=clip,
        fid_features=features,
        reference=args.reference,
        batch_size=args.batch_size,
        seed=args.seed,
        teacher_baseline=not args.no_teacher_baseline,
        grid_prompts=args.grid_prompts,
        teacher_nfe_per_step=teacher_nfe,
        student_nfe_per_step=student_nfe,
        device=device,
        progress=not args.no_progress,
        config=config,
    )
    print(format_rows(result["rows"]))
    print(
        f"wrote {args.out}/t2i_metrics.json, t2i_grid_steps{{n}}.png, t2i_metrics_vs_steps.png "
        f"({result['seconds']:.0f} s)"
    )
    return 0


def format_rows(rows: list[dict[str, Any]]) -> str:
    """The metric rows as a fixed-width text table ('-' for a metric that was not computed)."""

    def f(x: Any, width: int) -> str:
        return f"{x:{width}.3f}" if isinstance(x, float) else f"{'-':>{width}}"

    lines = [f"{'model':8} {'steps':>5} {'nfe':>4} {'CLIP':>8} {'dFID':>8} {'FID':>8} {'n':>6}"]
    for r in rows:
        lines.append(
            f"{r['model']:8} {r['steps']:5d} {r['nfe']:4d} {f(r['clip'], 8)} {f(r['dfid'], 8)} {f(r['fid'], 8)} "
            f"{r['n']:6d}"
        )
    return "\n".join(lines)
