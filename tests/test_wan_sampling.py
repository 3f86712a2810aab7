import pytest
import torch

import scfm
from scfm.export import export_diffusers_lora
from scfm.models.wan import WanAdapter
from scfm.pipelines.lora import load_lora
from scfm.pipelines.sampling import sample_pipeline
from scfm.weights.lora import lora_named_parameters
from test_wan import FRAMES, C, F, distilled_wan, load_pipe, wan_dir  # noqa: F401,F811  (fixture)

pytestmark = pytest.mark.diffusers


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_wan_pipeline_sampling_is_scfm_euler_on_the_same_grid(wan_dir, tmp_path, shift):  # noqa: F811
    result = distilled_wan(load_pipe(wan_dir).transformer)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in lora_named_parameters(result.model):
            if ".lora_B." in name:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    pipe = load_pipe(wan_dir)
    load_lora(pipe, export_diffusers_lora(result, tmp_path / "lora.safetensors"))
    got = sample_pipeline(
        pipe,
        ["a red cat"],
        2,
        shift=shift,
        generator=[torch.Generator().manual_seed(5)],
        height=32,
        width=48,
        guidance=4.0,
        output="latents",
    )
    cond = WanAdapter.encode_prompts(pipe, ["a red cat"], "cpu")
    noise = torch.randn(1, C, F, 4, 6, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(
        got, scfm.sample(result, noise, steps=2, shift=shift, lora_scale=1.0, **cond), atol=1e-4, rtol=1e-4
    )
    assert type(pipe.scheduler).__name__ == "UniPCMultistepScheduler"  # the user's scheduler is back
    video = sample_pipeline(pipe, ["a red cat"], 2, generator=[torch.Generator().manual_seed(5)], height=32, width=48)
    assert video.shape == (1, FRAMES, 3, 32, 48) and video.min() >= 0 and video.max() <= 1


def test_wan_previews_and_sample_cli_write_frame_strips(wan_dir, tmp_path):  # noqa: F811
    from PIL import Image

    from scfm.commands.cli import main

    (tmp_path / "p.txt").write_text("a red cat\n")
    assert (
        main(
            [
                "generate-data",
                "--model",
                str(wan_dir),
                "--prompts",
                str(tmp_path / "p.txt"),
                "--out",
                str(tmp_path / "c"),
                "--steps",
                "2",
                "--buckets",
                "48x32",
                "--dtype",
                "fp32",
                "--device",
                "cpu",
                "--local-files-only",
                "--previews",
            ]
        )
        == 0
    )
    with Image.open(next((tmp_path / "c" / "previews").glob("*.png"))) as im:
        assert im.size == (48 * FRAMES, 32)
    assert (
        main(
            [
                "sample",
                "--model",
                str(wan_dir),
                "--prompt",
                "a cat",
                "--steps",
                "2",
                "--height",
                "32",
                "--width",
                "48",
                "--out",
                str(tmp_path / "s.png"),
                "--local-files-only",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    with Image.open(tmp_path / "s.png") as im:
        assert im.size == (48 * FRAMES, 32)
