"""Config files, overrides and the presets' documented command line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import scfm
from scfm.train.config import LEGACY_FIELDS, DistillConfig
from scfm.train.yaml_config import dump_config, load_config, parse_overrides

ROOT = Path(__file__).resolve().parents[1]


def test_overrides_are_parsed_as_yaml_values():
    assert parse_overrides(["max_steps=30", "lora.targets=[qkv, proj]", "plan.self_grids=null", "compile=true"]) == {
        "max_steps": 30,
        "lora.targets": ["qkv", "proj"],
        "plan.self_grids": None,
        "compile": True,
    }


def test_float_fields_accept_yaml_1_1_exponents():
    cfg = load_config(None, ["lr=1e-4", "lora.alpha=16", "plan.shift_range=[1, 1]"])
    assert (cfg.lr, cfg.lora.alpha, cfg.plan.shift_range) == (1e-4, 16.0, (1.0, 1.0))
    assert isinstance(cfg.lora.alpha, float) and all(isinstance(s, float) for s in cfg.plan.shift_range)


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
    with pytest.raises(ValueError, match=r"plan.teacher_ratio=2.0 must lie in \[0, 1\]"):
        load_config(ROOT / "configs/digits.yaml", ["plan.teacher_ratio=2"])
    with pytest.raises(ValueError, match=r"lora.rank=0 must be a positive integer"):
        load_config(ROOT / "configs/digits.yaml", ["lora.rank=0"])


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
    assert load_config(path) == cfg and isinstance(cfg.lora.targets, tuple)


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


NESTED = {"lr": 1e-4, "lora": {"rank": 8, "alpha": 8.0}, "plan": {"teacher_ratio": 0.2, "shift_range": (1.0, 2.0)}}
DOTTED = {"lr": 1e-4, "lora.rank": 8, "lora.alpha": 8, "plan.teacher_ratio": 0.2, "plan.shift_range": [1, 2]}
LEGACY = {"lr": "1e-4", "lora_rank": 8, "lora_alpha": 8, "teacher_ratio": 0.2, "shift_min": 1, "shift_max": 2}


def test_nested_dotted_and_legacy_flat_keys_give_equal_configs():
    configs = [DistillConfig.from_dict(values) for values in (NESTED, DOTTED, LEGACY)]
    assert configs[0] == configs[1] == configs[2]
    assert configs[0].lora == scfm.LoraSpec(rank=8, alpha=8.0)  # the other lora fields keep their defaults
    assert configs[0].plan == scfm.PlanConfig(teacher_ratio=0.2, shift_range=(1.0, 2.0))


def test_legacy_fields_name_every_field_the_flat_config_had():
    assert set(LEGACY_FIELDS) == {
        *("lora_targets", "lora_rank", "lora_alpha", "lora_dropout", "t_skip", "teacher_ratio", "teacher_min"),
        *("teacher_max", "self_grids", "fm_ratio", "shift_min", "shift_max", "resolution_shift_prob"),
    }


def test_a_legacy_run_config_json_loads(tmp_path):
    legacy = {**DistillConfig().to_dict(), "lora_rank": 16, "lora_alpha": 16.0, "lora_targets": ["fc1"]}
    legacy.update(lora_dropout=0.0, t_skip=2, teacher_ratio=0.3, teacher_min=16, teacher_max=32, self_grids=[2, 4])
    legacy.update(fm_ratio=0.1, shift_min=1.0, shift_max=1.0, resolution_shift_prob=0.0)
    del legacy["lora"], legacy["plan"]
    (tmp_path / "scfm_config.json").write_text(json.dumps({"config": legacy, "lora_scales": {}}))
    cfg = DistillConfig.from_dict(json.loads((tmp_path / "scfm_config.json").read_text())["config"]).validate()
    assert cfg.lora == scfm.LoraSpec(targets=("fc1",), rank=16, alpha=16.0)
    assert cfg.plan == scfm.PlanConfig(2, 0.3, 16, 32, (2, 4), 0.1, (1.0, 1.0), 0.0)


def test_unknown_nested_key_is_rejected_naming_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown config field\(s\) \['lora.rnk'\]; valid lora fields: .*'lora.rank'"):
        DistillConfig.from_dict({"lora": {"rnk": 8}})
    with pytest.raises(ValueError, match=r"\['plan.shift'\]; valid plan fields: .*'plan.shift_range'"):
        load_config(None, ["plan.shift=2"])


def test_set_dotted_override_changes_one_field_of_a_nested_file_section(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("lora:\n  rank: 64\n  targets: [fc1, fc2]\nplan:\n  t_skip: 4\n")
    cfg = load_config(path, ["lora.rank=8", "plan.self_grids=[4, 8]"])
    assert cfg.lora == scfm.LoraSpec(targets=("fc1", "fc2"), rank=8)
    assert (cfg.plan.t_skip, cfg.plan.self_grids) == (4, (4, 8))


def test_to_dict_then_from_dict_is_the_identity():
    cfg = DistillConfig.from_dict({**DOTTED, "lora.targets": ["a", "b"], "plan.self_grids": [2, 4], "extra": {"k": 1}})
    assert DistillConfig.from_dict(cfg.to_dict()) == cfg
    assert DistillConfig.from_dict(DistillConfig().to_dict()) == DistillConfig()
    assert set(cfg.to_dict()["lora"]) == {"targets", "rank", "alpha", "dropout", "exclude", "init"}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"lr": float("inf")}, r"lr=inf must be a finite number"),
        ({"lr": "nan"}, r"lr=nan must be a finite number"),
        ({"max_steps": True}, r"max_steps=True must be an integer"),
        ({"max_steps": 300.5}, r"max_steps=300.5 must be an integer"),
        ({"gradient_checkpointing": 1}, r"gradient_checkpointing=1 must be true or false"),
        ({"teacher": 3}, r"teacher=3 must be text"),
        ({"plan.self_grids": 4}, r"plan.self_grids=4 must be a list or null"),
        ({"lora.targets": ["qkv", 3]}, r"lora.targets=\('qkv', 3\) must be a list of texts"),
        ({"plan.shift_range": [1, 2, 3]}, r"plan.shift_range=\(1.0, 2.0, 3\) must be a list of 2 items"),
    ],
)
def test_config_fields_are_type_checked_naming_the_field_the_value_and_the_form(values, message):
    with pytest.raises(ValueError, match=message):
        DistillConfig.from_dict(values).validate()


def test_cli_prints_one_line_for_a_user_error_and_the_traceback_only_with_debug(capsys):
    from scfm.commands.cli import main

    assert main(["distill", "--set", "lr=inf", "--set", "output_dir=null"]) == 2
    err = capsys.readouterr().err
    assert err == "scfm distill: error: lr=inf must be a finite number\n"
    with pytest.raises(ValueError, match="lr=inf"):
        main(["distill", "--set", "lr=inf", "--debug"])
