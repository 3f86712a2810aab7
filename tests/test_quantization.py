"""Memory savers: a quantized frozen base (int8 / fp8 / nf4), 8-bit AdamW states and CPU-kept EMAs.

On the CPU: int8 bases and 8-bit AdamW run; fp8 and nf4 are refused before any weight loads, with the reason.
The tiny Flux / SD3 runs distill on an int8 bf16 base with 8-bit AdamW, resume bit-identically and export a
LoRA that loads into the unquantized pipeline with no missing keys.
"""

import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("torchao")
pytest.importorskip("bitsandbytes")

import scfm  # noqa: E402
from scfm.commands.cli import main  # noqa: E402
from scfm.data.batches import DigitsBatches  # noqa: E402
from scfm.fileio import load_safetensors  # noqa: E402
from scfm.models.builtin import load_shipped_teacher  # noqa: E402
from scfm.train.checkpoint import optimizer_from_tensors, optimizer_to_tensors  # noqa: E402
from scfm.train.config import DistillConfig  # noqa: E402
from scfm.train.optimizers import make_optimizer  # noqa: E402
from scfm.train.presets import digits_config  # noqa: E402
from scfm.weights.quantize import base_bytes, quantization_problem, quantize_base  # noqa: E402
from test_pipeline_e2e import pipeline_dirs, probe, write_config  # noqa: E402,F401  (shared tiny pipelines)

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("mode", ["fp8", "nf4"])
def test_fp8_and_nf4_are_refused_on_a_cpu_with_the_reason(mode):
    config = DistillConfig(base_quantization=mode, device="cpu").validate()  # the name is valid anywhere
    with pytest.raises(ValueError, match=f"base_quantization='{mode}': .*CUDA.*use int8"):
        config.check_runnable(torch.device("cpu"))


def test_unknown_names_and_missing_libraries_name_the_field_and_the_fix(monkeypatch):
    with pytest.raises(ValueError, match=r"base_quantization='int4' must be one of \('none', 'int8', 'fp8', 'nf4'\)"):
        DistillConfig(base_quantization="int4").validate()
    with pytest.raises(ValueError, match=r"optimizer='sgd' must be one of \('adamw', 'adamw8bit'\)"):
        DistillConfig(optimizer="sgd").validate()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a))
    assert "pip install 'scfm[quantization]'" in quantization_problem("int8", "cpu")
    with pytest.raises(ValueError, match=r"base_quantization='int8': needs torchao: pip install"):
        DistillConfig(base_quantization="int8").check_runnable("cpu")


def test_cli_refuses_fp8_on_a_cpu_in_one_line_before_loading_anything(tmp_path, monkeypatch, capsys):
    import scfm.train.sources as sources

    def no_load(*args, **kwargs):
        raise AssertionError("the teacher was loaded before the refusal")

    monkeypatch.setattr(sources, "build_teacher", no_load)
    monkeypatch.setattr(sources, "build_data", no_load)
    out = tmp_path / "run"
    code = main(
        ["distill", str(ROOT / "configs/digits.yaml"), "--set", f"output_dir={out}", "--set", "device=cpu"]
        + ["--set", "base_quantization=fp8"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "base_quantization='fp8'" in err[0] and "CUDA" in err[0]


# ----------------------------------------------------------------------------- the digits DiT


def test_int8_digits_base_holds_under_055_of_its_bf16_bytes_and_stays_close():
    model = load_shipped_teacher("digits")
    bf16 = base_bytes(load_shipped_teacher("digits").to(torch.bfloat16))
    g = torch.Generator().manual_seed(0)
    x, t, label = torch.randn(64, 1, 8, 8, generator=g), torch.rand(64, generator=g), torch.arange(64) % 10
    with torch.no_grad():
        ref = model(x, t, label)
        names = quantize_base(model, "int8")
        got = model(x, t, label)
    assert len(names) > 10 and all(type(model.get_submodule(n).weight).__name__ == "Int8Tensor" for n in names)
    assert base_bytes(model) <= 0.55 * bf16
    assert (got - ref).norm() / ref.norm() < 0.02  # per-channel int8: about 0.5% here


def test_nf4_layers_hold_the_planned_bytes_and_train_a_lora():
    """The nf4 conversion (refused for runs without CUDA) exercised through bitsandbytes' CPU backend: 0.5 B a
    weight and an fp32 absmax per 64, as the memory plan counts it; peft's LoRA on top takes gradients."""
    from scfm.weights.lora import LoraSpec, attach_lora
    from scfm.weights.quantize import _to_nf4

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
    x = torch.randn(8, 128)
    ref = model(x)
    _to_nf4(model, ["0", "2"])
    weights = 128 * 256 + 256 * 64
    biases, code_books = 4 * (256 + 64), 2 * 16 * 4  # fp32 biases; the 16-value nf4 code of each layer
    assert base_bytes(model) == weights // 2 + 4 * (weights // 64) + biases + code_books
    with torch.no_grad():
        assert (model(x) - ref).norm() / ref.norm() < 0.2
    attach_lora(model, LoraSpec(rank=4, alpha=4.0, targets=("0", "2")))
    model(x).pow(2).mean().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)


def test_8bit_adamw_state_round_trips_through_the_checkpoint_format():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(64, 128)), torch.nn.Parameter(torch.randn(8, 8))]
    opt = make_optimizer("adamw8bit", params, 1e-3, 0.0)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    tensors, meta = optimizer_to_tensors(opt)
    assert any(v.dtype == torch.uint8 for v in tensors.values())  # 8-bit moments for the big tensor
    fresh = [torch.nn.Parameter(p.detach().clone()) for p in params]
    again = make_optimizer("adamw8bit", fresh, 1e-3, 0.0)
    optimizer_from_tensors(again, {k: v.clone() for k, v in tensors.items()}, meta)
    for a, b in ((params, opt), (fresh, again)):
        for p in a:
            p.grad = torch.ones_like(p)
        b.step()
    assert all(torch.equal(p, q) for p, q in zip(params, fresh))


def _digits_run(out, steps, resume=None, **fields):
    config = digits_config(
        {
            "max_steps": 6,
            "batch_size": 16,
            "checkpoint_every": 3,
            "output_dir": str(out),
            "logger": "jsonl",
            "calibrate": False,
            "base_quantization": "int8",
            "optimizer": "adamw8bit",
            "offload_ema": True,
            **fields,
        }
    )
    config.max_steps = steps
    data = DigitsBatches(16, seed=0)
    return scfm.distill(load_shipped_teacher("digits"), data, config, progress=False, resume=resume)


def test_int8_base_with_8bit_adamw_resumes_bit_identically(tmp_path):
    full = _digits_run(tmp_path / "full", 6)
    _digits_run(tmp_path / "resumed", 3)
    _digits_run(tmp_path / "resumed", 6, resume="latest")
    for name in ("student.safetensors", "ema_fast.safetensors", "ema_slow.safetensors"):
        a, b = load_safetensors(tmp_path / "full" / name), load_safetensors(tmp_path / "resumed" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    trained = load_safetensors(tmp_path / "full" / "student.safetensors")
    assert any(v.abs().max() > 0 for k, v in trained.items() if "lora_B" in k)
    bf16 = 2 * sum(p.numel() for n, p in full.model.named_parameters() if "lora_" not in n)
    assert base_bytes(full.model) < 0.55 * bf16


# ----------------------------------------------------------------------------- tiny Flux / SD3


@pytest.fixture(scope="module", params=["flux", "sd3"])
def tiny_cache(request, pipeline_dirs, tmp_path_factory):  # noqa: F811  (the imported fixture)
    """A teacher cache of the tiny pipeline of each family (2 prompts, 2 Euler steps)."""
    family, model = request.param, pipeline_dirs[request.param]
    root = tmp_path_factory.mktemp(f"quantized-{family}")
    (root / "prompts.txt").write_text("a red cat\na blue dog\n")
    args = ["generate-data", "--model", str(model), "--prompts", str(root / "prompts.txt"), "--out", str(root / "c")]
    args += ["--steps", "2", "--buckets", "32x32", "--dtype", "fp32", "--device", "cpu", "--local-files-only"]
    assert main(args) == 0
    return family, model, root


@pytest.mark.diffusers
def test_tiny_pipeline_on_an_int8_base_resumes_bit_identically_and_exports_a_lora_for_the_unquantized_model(
    tiny_cache, tmp_path
):
    from scfm.models.adapters import load_pipeline
    from scfm.pipelines.lora import load_lora
    from scfm.train.run_folder import load_run

    family, model, root = tiny_cache
    quantized = {"base_quantization": "int8", "optimizer": "adamw8bit", "model_dtype": "bf16", "checkpoint_every": 2}
    quantized["calibrate"] = "false"

    def run(name, steps, *extra):
        config = write_config(tmp_path / f"{name}-{steps}.yaml", model, root / "c", tmp_path / name, family)
        args = ["distill", str(config), "--set", f"max_steps={steps}"]
        for key, value in quantized.items():
            args += ["--set", f"{key}={value}"]
        assert main([*args, *extra]) == 0

    run("full", 4)
    run("resumed", 2)
    run("resumed", 4, "--resume", "latest")
    full, resumed = (load_safetensors(tmp_path / n / "student.safetensors") for n in ("full", "resumed"))
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)
    assert any(v.abs().max() > 0 for k, v in full.items() if "lora_B" in k)

    out = tmp_path / "lora.safetensors"
    assert (
        main(["export", "--run", str(tmp_path / "full"), "--format", "diffusers", "--out", str(out), "--dtype", "fp32"])
        == 0
    )
    pipe, adapter_cls = load_pipeline(model, local_files_only=True)  # fp32, not quantized
    modules = load_lora(pipe, out)  # raises on a missing or unexpected key
    assert len(modules) == len(load_safetensors(out)) // 2
    assert not any("Int8" in type(p).__name__ for p in pipe.transformer.parameters())
    result, config = load_run(tmp_path / "full", model_dtype="fp32")  # its LoRA on the unquantized fp32 base
    kwargs = {"guidance_scale": config.cfg_scale, "cfg_mode": config.cfg_mode} if family == "sd3" else {}
    x, t, cond = probe(family)
    with torch.no_grad():
        torch.testing.assert_close(adapter_cls(pipe.transformer, **kwargs)(x, t, **cond), result(x, t, **cond))
