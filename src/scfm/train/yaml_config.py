"""Load a :class:`DistillConfig` from YAML with ``key=value`` overrides.

``scfm distill CONFIG.yaml --set lr=1e-4 --set lora.targets=[qkv,proj] --set plan.self_grids=[2,4]``:
each value is parsed as YAML, so numbers, booleans, lists and null work as written. The
``plan`` and ``lora`` fields are nested sections in the file and dotted names in ``--set``::

    lr: 1.0e-3
    lora:
      rank: 8
      targets: [qkv, proj]
    plan:
      teacher_ratio: 0.2

Unknown keys and bad values fail before any work starts, naming the field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from scfm.train.config import DistillConfig, dotted_values


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["a=1", "b.c=[x, y]"]`` -> ``{"a": 1, "b.c": ["x", "y"]}`` (keys kept as written)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r} is not key=value (for example --set max_steps=300)")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ValueError(f"--set {item!r}: the value is not valid YAML ({err})") from err
    return out


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> DistillConfig:
    """Read ``path`` (YAML mapping of DistillConfig fields), apply ``key=value`` overrides over it
    field by field (``--set lora.rank=8`` keeps the file's other ``lora`` fields), validate."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"config file {str(path)!r} is not valid YAML: {err}") from err
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(
                f"config file {str(path)!r} must hold a mapping of field: value, got {type(loaded).__name__}"
            )
        values = loaded or {}
    return DistillConfig.from_dict(dotted_values(values, parse_overrides(overrides))).validate()


def dump_config(config: DistillConfig) -> str:
    """The resolved config as YAML (what a run saves next to its outputs)."""
    return yaml.safe_dump(_plain(config.to_dict()), sort_keys=False)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
