"""The playground's gradio page (``scfm playground``, :mod:`scfm.commands.playground`): controls, images, captions,
the quality plot and the LoRA upload around a :class:`~scfm.commands.playground_models.Playground`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from scfm.commands.playground_models import (
    MIXED,
    STUDENT_MAX_STEPS,
    STUDENT_STEPS,
    TEACHER_MAX_STEPS,
    TEACHER_STEPS,
    Playground,
    Request,
    Shot,
    whole_number,
)

# ---------------------------------------------------------------------- the page


def _caption(side: str, shot: Shot, batch: int) -> str:
    return f"**{side}**: {shot.seconds:.2f} s wall time · NFE {shot.nfe} per sample · {batch} samples"


def build_page(playground: Playground) -> Any:
    """The gradio ``Blocks`` page of ``playground`` (not launched)."""
    import gradio as gr

    from scfm.commands.cli import USER_ERRORS

    def steps_box(side: str, value: int, most: int, info: str) -> Any:
        return gr.Number(value, label=f"{side} steps (1-{most})", info=info, precision=0, elem_id=f"{side}-steps")

    def result_box(side: str) -> tuple[Any, Any]:
        with gr.Column():
            image = gr.Image(label=side, type="filepath", format="png", interactive=False, elem_id=f"{side}-image")
            return image, gr.Markdown(f"**{side}**: press Generate", elem_id=f"{side}-info")

    pg = playground
    with gr.Blocks(title="scfm playground", analytics_enabled=False) as page:
        gr.Markdown(f"## scfm playground\n{pg.title}. Same noise for both sides; Euler on scfm's time grid.")
        with gr.Row(equal_height=True):
            if pg.condition == "class":
                condition = gr.Dropdown(
                    [MIXED, *map(str, range(10))], value=MIXED, label="digit class", elem_id="class", scale=2
                )
            elif pg.condition == "prompt":
                condition = gr.Textbox(pg.prompt, label="prompt", elem_id="prompt", scale=3)
            else:
                condition = gr.State("")
            seed = gr.Number(0, label="seed", precision=0, elem_id="seed", scale=1)
            batch = gr.Slider(1, pg.max_batch, pg.default_batch, step=1, label="batch size", elem_id="batch", scale=2)
            shift = gr.Number(pg.default_shift, label="shift", info="the family default", elem_id="shift", scale=1)
        teacher_default, student_default = pg.default_guidance
        with gr.Row(equal_height=True):
            with gr.Column():
                teacher_steps = steps_box(
                    "teacher", TEACHER_STEPS, TEACHER_MAX_STEPS, "the base weights (LoRA scale 0)"
                )
                teacher_guidance = gr.Number(
                    teacher_default, label="teacher guidance", visible=teacher_default is not None
                )
            with gr.Column():
                with gr.Row():
                    student_steps = steps_box(
                        "student", STUDENT_STEPS, STUDENT_MAX_STEPS, "the LoRA at the scale beside"
                    )
                    scale = gr.Number(
                        pg.default_scale(STUDENT_STEPS),
                        label="LoRA scale",
                        info=pg.scale_note(STUDENT_STEPS),
                        elem_id="lora-scale",
                    )
                student_guidance = gr.Number(
                    student_default, label="student guidance", visible=student_default is not None
                )
        button = gr.Button("Generate", variant="primary", elem_id="generate")  # not under the error toasts
        with gr.Row():
            teacher_image, teacher_info = result_box("teacher")
            student_image, student_info = result_box("student")
        with gr.Row():
            plot = pg.quality_plot()
            if plot is not None:
                with gr.Column():
                    gr.Markdown("**the run's quality against steps** (its metrics.json)")
                    gr.Image(str(plot), show_label=False, interactive=False, elem_id="quality-plot")
            with gr.Column():
                scales = gr.Markdown(pg.scales_line())
                upload = gr.File(label="replace the student's LoRA (.safetensors)", file_types=[".safetensors"])

        def on_steps(steps):
            try:
                n = whole_number(steps, "student steps", 1, STUDENT_MAX_STEPS)
            except ValueError:
                return gr.update()
            return gr.update(value=pg.default_scale(n), info=pg.scale_note(n))

        def on_upload(file):
            if file is None:
                return
            try:
                pg.swap_lora(Path(file))
            except USER_ERRORS as err:
                raise gr.Error(str(err)) from None

        def after_upload(steps):
            return on_steps(steps), gr.update(value=pg.default_shift), pg.scales_line()

        fields = (teacher_steps, student_steps, scale, shift, condition, seed, batch)
        guidances = (teacher_guidance, student_guidance)
        inputs = {*fields, *guidances}  # a set: gradio passes one {component: value} dict

        def read(values: dict) -> Request:
            try:
                return pg.request(*(values[f] for f in fields), guidance=tuple(values[g] for g in guidances))
            except USER_ERRORS + (TypeError,) as err:
                raise gr.Error(str(err)) from None

        def check(values: dict) -> None:
            read(values)

        def sampler(side: str) -> Callable[..., tuple[str, str]]:
            def run(values: dict, progress=gr.Progress()):  # noqa: B008 (gradio's way to ask for a progress bar)
                request = read(values)
                steps = request.teacher_steps if side == "teacher" else request.student_steps

                def on_call(i: int) -> None:
                    progress((i, steps), desc=f"{side}: {steps} steps", unit="steps")

                try:
                    shot = pg.generate(side, request, on_call)
                except USER_ERRORS as err:
                    raise gr.Error(str(err)) from None
                return str(shot.path), _caption(side, shot, request.batch)

            return run

        student_steps.change(on_steps, student_steps, scale)
        # Bad values stop at the check (an error toast; the last images stay). Then the student, whose image shows
        # while the teacher (progress on its side only) is sampled.
        checked = button.click(check, inputs, None, concurrency_limit=None)
        student = checked.success(sampler("student"), inputs, [student_image, student_info], concurrency_id="model")
        student.success(sampler("teacher"), inputs, [teacher_image, teacher_info], concurrency_id="model")
        loaded = upload.upload(on_upload, upload, None, concurrency_id="model")  # an error: a toast only
        loaded.success(after_upload, student_steps, [scale, shift, scales])
        loaded.failure(lambda: None, None, upload)  # a refused file does not stay on show
    return page
