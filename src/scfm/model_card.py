"""Model cards: the ``README.md`` next to an exported LoRA (and in a run folder) that says how to use it.

A card is Markdown with a YAML header in the Hugging Face Hub's model-card convention (``base_model``,
``library_name``, ``tags``, ``pipeline_tag``, ``license`` when the base's is known), readable by
``huggingface_hub.ModelCard``. Its body: what the LoRA is, the LoRA strength per step count, a quality
table (a ``scfm eval`` / ``scfm demo`` result when there is one, else the run's own calibration), a
teacher-vs-student PNG grid when one exists, a diffusers snippet that samples exactly as scfm does
(plain Euler on the fixed-shift grid, the calibrated LoRA strength, the run's guidance), and the ComfyUI
settings that do the same.

Everything here is text built from plain data (:class:`CardInputs`); only :func:`pipeline_call_style`
looks at the installed diffusers, to name the pipeline's keyword for the LoRA strength.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scfm.export import LoraUsage
from scfm.fileio import atomic_write_text
from scfm.models.adapters import VelocityAdapter
from scfm.objective.grids import FIRST_POINT

METRIC_COLUMNS = {
    "fd": "FD (lower is better)",
    "class_acc": "class accuracy",
    "clip": "CLIP score",
    "dfid": "dFID to teacher",
    "fid": "FID",
}
"""Row keys of a quality table shown in a card, in column order, with their headings."""

CARD_MARK = "<!-- model card written by scfm -->"
"""The line after a card's YAML header that marks it as scfm's own (so a rerun may replace it, and nothing else)."""

QUALITY_FILES = ("t2i_metrics.json", "metrics.json")
"""Result files a card reads rows from: ``scfm eval`` (text-to-image) and ``scfm demo``."""


@dataclass
class PipelineCall:
    """How a diffusers pipeline class takes scfm's sampling settings (read from its ``__call__`` signature)."""

    class_name: str
    scale_kwarg: str
    """``joint_attention_kwargs`` or ``attention_kwargs``: carries ``{"scale": lora_strength}``."""
    takes_sigmas: bool
    """Whether ``__call__`` accepts ``sigmas`` (else the scheduler's ``set_timesteps`` is pinned to them)."""


def pipeline_call_style(adapter_cls: type[VelocityAdapter]) -> PipelineCall:
    """The :class:`PipelineCall` of the family's diffusers pipeline class (diffusers must be installed)."""
    import diffusers

    pipeline = getattr(diffusers, adapter_cls.pipeline_class_name)
    params = inspect.signature(pipeline.__call__).parameters
    scale_kwarg = next((k for k in ("joint_attention_kwargs", "attention_kwargs") if k in params), "")
    if not scale_kwarg:
        raise ValueError(f"{adapter_cls.pipeline_class_name} takes no attention kwargs for a LoRA scale")
    return PipelineCall(adapter_cls.pipeline_class_name, scale_kwarg, "sigmas" in params)


@dataclass
class QualityTable:
    """Rows ``{"model", "steps", "nfe", <column key>: value, ...}``, the (key, heading) columns shown after
    model / steps / NFE, and where the rows come from (one sentence)."""

    rows: list[dict[str, Any]]
    columns: list[tuple[str, str]]
    source: str


@dataclass
class CardInputs:
    """Everything a card says. ``lora_dir`` / ``weight_name`` are what the snippet passes to
    ``load_lora_weights``; ``grid`` is a PNG path relative to the card (None: no grid)."""

    usage: LoraUsage
    adapter_cls: type[VelocityAdapter] | None
    """The diffusers family's adapter class; None for a built-in model (no diffusers / ComfyUI sections)."""
    lora_dir: str
    weight_name: str
    example_prompt: str = "a photo of a red fox in the snow"
    quality: QualityTable | None = None
    grid: str | None = None
    extra_tags: list[str] = field(default_factory=list)
    call: PipelineCall | None = None
    """None: read from the installed diffusers with :func:`pipeline_call_style`."""
    python_snippet: str | None = None
    """Replaces the diffusers snippet (built-in models: scfm's own Python API)."""
    before_snippet: list[str] = field(default_factory=list)
    """Markdown lines before the snippet (e.g. the export command a run folder needs first)."""


def recommended_steps(usage: LoraUsage) -> int:
    """The step count a card's snippet uses: 4 when calibrated (the usual few-step choice), else the most
    calibrated step count at most 4, else 4."""
    steps = sorted(usage.lora_scales)
    if not steps or 4 in steps:
        return 4
    return max((n for n in steps if n <= 4), default=steps[0])


def card_header(inputs: CardInputs, base_card: dict[str, Any] | None = None) -> dict[str, Any]:
    """The YAML header: base_model, library_name, tags, pipeline_tag and the base's license when known
    (the family's table of known bases, else a local base folder's own card)."""
    usage, adapter_cls = inputs.usage, inputs.adapter_cls
    header: dict[str, Any] = {}
    if not _is_local(usage.base_model):
        header["base_model"] = usage.base_model
    header["library_name"] = "diffusers" if adapter_cls is not None else "scfm"
    known = adapter_cls.base_license(usage.base_model) if adapter_cls is not None else {}
    header.update(known or _license_of(base_card or {}))
    tags = ["lora", "scfm", "few-step", "flow-matching", "distillation", usage.architecture, *inputs.extra_tags]
    if adapter_cls is not None:
        header["pipeline_tag"] = adapter_cls.pipeline_tag
        tags[1:1] = ["diffusers", adapter_cls.pipeline_tag]
    header["tags"] = tags
    return header


def _is_local(base_model: str) -> bool:
    return os.path.isabs(base_model) or base_model.startswith(".") or Path(base_model).exists()


def _license_of(base_card: dict[str, Any]) -> dict[str, str]:
    keys = ("license", "license_name", "license_link")
    return {k: str(base_card[k]) for k in keys if k in base_card}


def read_card_header(folder: str | os.PathLike) -> dict[str, Any]:
    """The YAML header of ``folder/README.md`` ({} when there is none or it does not parse)."""
    path = Path(folder) / "README.md"
    try:
        text = path.read_text()
    except OSError:
        return {}
    if not text.startswith("---"):
        return {}
    try:
        header = yaml.safe_load(text.split("---", 2)[1])
    except (yaml.YAMLError, IndexError):
        return {}
    return header if isinstance(header, dict) else {}


def diffusers_snippet(inputs: CardInputs, steps: int) -> str:
    """Python that loads the base pipeline and the LoRA with diffusers alone and samples ``steps`` Euler steps on
    scfm's grid at the calibrated strength, the family's shift and the run's guidance (runs as written)."""
    usage, adapter_cls = inputs.usage, inputs.adapter_cls
    call = inputs.call or pipeline_call_style(adapter_cls)
    strength = usage.lora_scales.get(steps, 1.0)
    guidance = adapter_cls.pipeline_guidance_scale(usage.guidance) if adapter_cls.true_cfg else usage.guidance
    video = adapter_cls.pipeline_tag == "text-to-video"
    strengths = ", ".join(f"{n}: {k:g}" for n, k in sorted(usage.lora_scales.items())) or "1 at every step count"
    lines = [
        "import torch",
        "from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler",
        *(["from diffusers.utils import export_to_video"] if video else []),
        "",
        'device = "cuda" if torch.cuda.is_available() else "cpu"',
        'dtype = torch.bfloat16 if device == "cuda" else torch.float32',
        f"pipe = DiffusionPipeline.from_pretrained({usage.base_model!r}, torch_dtype=dtype).to(device)",
        f"pipe.load_lora_weights({inputs.lora_dir!r}, weight_name={inputs.weight_name!r})",
        "",
        "# scfm samples the student with plain Euler on a fixed-shift grid (no resolution shift):",
        f"# LoRA strength per step count {{{strengths}}}",
        f"steps, shift, lora_strength = {steps}, {usage.shift:g}, {strength:g}",
        "pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(",
        "    pipe.scheduler.config, shift=1.0, use_dynamic_shifting=False",
        ")",
        f"sigmas = [min({FIRST_POINT!r}, shift * u / (1 + (shift - 1) * u)) for u in (1 - i / steps for i in "
        "range(steps))]",
    ]
    sigma_kwarg = "    sigmas=sigmas,"
    if not call.takes_sigmas:
        lines += [
            "import functools",
            "",
            "pipe.scheduler.set_timesteps = functools.partial(pipe.scheduler.set_timesteps, sigmas=sigmas)",
        ]
        sigma_kwarg = ""
    lines += [
        f"{'video' if video else 'image'} = pipe(",
        f"    {inputs.example_prompt!r},",
        "    num_inference_steps=steps,",
        *([sigma_kwarg] if sigma_kwarg else []),
        f"    guidance_scale={guidance:g},",
        f'    {call.scale_kwarg}={{"scale": lora_strength}},',
        "    generator=torch.Generator().manual_seed(0),",
        f").{'frames' if video else 'images'}[0]",
        'export_to_video(video, "scfm.mp4", fps=16)' if video else 'image.save("scfm.png")',
    ]
    return "\n".join(lines)


def quality_section(quality: QualityTable | None) -> list[str]:
    """Markdown lines: the quality rows as a table, or a note that none was measured."""
    if quality is None or not quality.rows:
        return ["No quality measurement was found for this LoRA; run `scfm eval` and export again to add one."]
    columns = [("model", "model"), ("steps", "steps"), ("nfe", "NFE"), *quality.columns]
    columns = [(k, h) for k, h in columns if any(_number(r.get(k)) for r in quality.rows)]  # no empty columns
    lines = [quality.source, "", "| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_number(r.get(k)) for k, _ in columns) + " |" for r in quality.rows]
    return lines


def _number(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def card_text(inputs: CardInputs, base_card: dict[str, Any] | None = None) -> str:
    """The whole card: YAML header and Markdown body."""
    usage = inputs.usage
    steps = recommended_steps(usage)
    header = yaml.safe_dump(card_header(inputs, base_card), sort_keys=False, allow_unicode=True).strip()
    counts = sorted(usage.lora_scales) or [1, 2, 4, 8]
    strengths = [(n, usage.lora_scales.get(n, 1.0)) for n in counts]
    adapter_cls = inputs.adapter_cls
    guidance = _guidance_words(usage, adapter_cls) if adapter_cls is not None else "as the teacher was distilled"
    title = usage.title or f"SCFM few-step LoRA for {Path(usage.base_model).name or usage.base_model}"
    lines = [
        "---",
        header,
        "---",
        CARD_MARK,
        "",
        f"# {title}",
        "",
        f"A LoRA for `{usage.base_model}` distilled with SCFM (velocity-space self-distillation with a fast and a "
        f"slow EMA; arXiv 2510.17858) so that the base samples in {counts[0]}-{counts[-1]} steps with the plain "
        f"Euler solver. Rank {usage.rank}, weights `{usage.final_weights}`, written by scfm.",
        "",
        "## How to sample",
        "",
        f"- Sampler: Euler, {counts[0]}-{counts[-1]} steps (recommended: {steps}).",
        f"- Sampling grid: fixed shift {usage.shift:g} (`t = s u / (1 + (s - 1) u)`, u = 1 - i / steps), no "
        "resolution-dependent shift.",
        f"- Guidance: {guidance}.",
        "- LoRA strength per step count (calibrated after training; the file's `scfm.lora_scales` header says the "
        "same):",
        "",
        "| steps | " + " | ".join(str(n) for n, _ in strengths) + " |",
        "|---|" + "---|" * len(strengths),
        "| LoRA strength | " + " | ".join(f"{k:g}" for _, k in strengths) + " |",
        "",
        "## Quality",
        "",
        *quality_section(inputs.quality),
        "",
    ]
    if inputs.grid:
        lines += [f"![teacher vs student]({inputs.grid})", "", "Rows: the teacher, then the student, same noise.", ""]
    if adapter_cls is None:
        snippet = inputs.python_snippet or ""
        return "\n".join([*lines, "## Python", "", *inputs.before_snippet, "```python", snippet, "```", ""])
    lines += [
        "## diffusers",
        "",
        *inputs.before_snippet,
        "```python",
        inputs.python_snippet or diffusers_snippet(inputs, steps),
        "```",
        "",
        "## ComfyUI",
        "",
        "Load the base model and this LoRA (`LoraLoaderModelOnly`, strength as in the table above; the ComfyUI "
        "export `scfm export --format comfyui` carries ComfyUI's key names), then:",
        "",
        "| node input | value |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in adapter_cls.comfyui_settings(usage.shift, usage.guidance)),
        f"| KSampler steps | {steps} |",
        "",
    ]
    return "\n".join(lines)


def _guidance_words(usage: LoraUsage, adapter_cls: type[VelocityAdapter]) -> str:
    if adapter_cls.true_cfg:
        if usage.cfg_mode == "baked" or usage.guidance == 0:
            return (
                "none at sampling (CFG is baked into the LoRA: one pass a step, diffusers `guidance_scale=1`)"
                if usage.cfg_mode == "baked"
                else "none (diffusers `guidance_scale=1`)"
            )
        return (
            f"classifier-free guidance w = {usage.guidance:g} (diffusers `guidance_scale={usage.guidance + 1:g}`, "
            "two passes a step)"
        )
    return f"embedded guidance {usage.guidance:g} (diffusers `guidance_scale={usage.guidance:g}`)"


def read_quality(folder: str | os.PathLike) -> QualityTable | None:
    """The rows of a ``scfm eval`` (``t2i_metrics.json``) or ``scfm demo`` (``metrics.json``) result folder."""
    for name in QUALITY_FILES:
        path = Path(folder) / name
        if not path.is_file():
            continue
        content = json.loads(path.read_text())
        rows = [r for r in content.get("rows", []) if isinstance(r, dict) and "steps" in r]
        if rows:
            what = "`scfm eval`" if name == QUALITY_FILES[0] else "`scfm demo`"
            columns = [(k, heading) for k, heading in METRIC_COLUMNS.items() if any(k in r for r in rows)]
            if any("lora_scale" in r for r in rows):
                columns.append(("lora_scale", "LoRA strength"))
            return QualityTable(rows, columns, f"Measured by {what} ({name}).")
    return None


def calibration_quality(calibration: dict[str, Any]) -> QualityTable | None:
    """A quality table from a run's ``calibration.json``: per step count the latent MSE to the teacher's own
    many-step samples at the chosen strength, at strength 1 and at 0 (= the teacher's Euler), where measured."""
    rows = []
    for n, tried in sorted(calibration.get("tried", {}).items(), key=lambda kv: int(kv[0])):
        chosen = calibration.get("scales", {}).get(n)
        by_scale = {float(k): float(v) for k, v in tried.items()}
        rows.append(
            {
                "model": "student",
                "steps": int(n),
                "nfe": "",
                "lora_scale": chosen,
                "mse": by_scale.get(float(chosen)) if chosen is not None else None,
                "mse_scale1": by_scale.get(1.0),
                "mse_teacher": by_scale.get(0.0),
            }
        )
    if not rows:
        return None
    columns = [
        ("lora_scale", "LoRA strength"),
        ("mse", "latent MSE to the teacher"),
        ("mse_scale1", "... at strength 1"),
        ("mse_teacher", "... at strength 0 (the teacher's own Euler)"),
    ]
    method = calibration.get("method", "paired latent MSE to the teacher")
    return QualityTable(rows, columns, f"From the run's calibration on a held-out batch ({method}); lower is better.")


def is_scfm_card(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a card scfm wrote (it carries :data:`CARD_MARK`); False for a missing file."""
    try:
        return CARD_MARK in Path(path).read_text(errors="replace")
    except OSError:
        return False


def write_card(path: str | os.PathLike, inputs: CardInputs, base_card: dict[str, Any] | None = None) -> Path:
    """Write :func:`card_text` to ``path`` atomically; returns the path. An existing file that is not an scfm card
    (someone's own README.md) is never replaced: ``FileExistsError`` names it."""
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not is_scfm_card(path):
        raise FileExistsError(f"{str(path)!r} exists and is not an scfm model card; it is left as it is")
    return atomic_write_text(path, card_text(inputs, base_card))
