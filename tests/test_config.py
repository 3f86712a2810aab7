"""Config files, overrides and the presets' documented command line."""

import subprocess
import sys
from pathlib import Path

import pytest

from scfm.train.config import DistillConfig
from scfm.train.yaml_config import dump_config, load_config, parse_overrides

ROOT = Path(__file__).resolve().parents[1]


def test_overrides_are_parsed_as_yaml_values():
    assert parse_overrides(["max_steps=30", "lora_targets=[qkv, proj]", "self_grids=null", "compile=true"]) == {
        "max_steps": 30,
        "lora_targets": ["qkv", "proj"],
        "self_grids": None,
        "compile": True,
    }


def test_float_fields_accept_yaml_1_1_exponents():
    assert load_config(None, ["lr=1e-4", "lora_alpha=16"]).lr == 1e-4


@pytest.mark.parametrize("preset", ["digits", "toy2d"])
def test_presets_load_and_hold_the_run_fields(preset):
    cfg = load_config(
        ROOT / "configs" / f"{preset}.yaml", ["max_steps=300", "checkpoint_every=100", "output_dir=runs/a"]
    )
    assert (cfg.max_steps, cfg.checkpoint_every, cfg.output_dir, cfg.seed) == (300, 100, "runs/a", 0)


def test_unknown_field_lists_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config field\(s\) \['learning_rate'\]; valid fields: .*'lr'"):
        load_config(None, ["learning_rate=1e-3"])


def test_bad_value_names_field_value_and_range():
    with pytest.raises(ValueError, match=r"teacher_ratio=2.0 must lie in \[0, 1\]"):
        load_config(ROOT / "configs/digits.yaml", ["teacher_ratio=2"])


def test_malformed_override_and_yaml_file_are_reported(tmp_path):
    with pytest.raises(ValueError, match="is not key=value"):
        parse_overrides(["max_steps"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(bad)


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_config(ROOT / "configs/digits.yaml")
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg and isinstance(DistillConfig().lora_targets, tuple)


def test_the_documented_digits_command_runs(tmp_path):
    out = tmp_path / "a"
    cmd = [
        sys.executable,
        "-m",
        "scfm",
        "distill",
        str(ROOT / "configs/digits.yaml"),
        "--set",
        f"output_dir={out}",
        "--set",
        "max_steps=4",
        "--set",
        "checkpoint_every=2",
        "--set",
        "batch_size=8",
        "--set",
        "validate_every=2",
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    for name in ("lora.safetensors", "ema_fast.safetensors", "ema_slow.safetensors", "config.yaml", "metrics.jsonl"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]
    assert sorted(p.name for p in (out / "validation").iterdir()) == ["step_00000002.png", "step_00000004.png"]
    assert any((out / "tensorboard").iterdir())


def test_yaml_no_is_read_as_the_string_no_for_text_fields():
    from scfm.train.yaml_config import load_config

    assert load_config(None, ["mixed_precision=no", "target_precision=no"]).mixed_precision == "no"
