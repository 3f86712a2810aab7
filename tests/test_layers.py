"""The package layout of DESIGN.md, read from the source with ``ast``: imports point down the layer order,
argparse lives in the command layer only, and nothing outside ``models/`` names a model family."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "src" / "scfm"
LAYERS = (
    "commands",
    "eval",
    "train",
    "data",
    "pipelines",
    "model_card",
    "export",
    "calibration",
    "sampling",
    "models",
    "distilled",
    "weights",
    "objective",
    ("fileio", "devices", "_version", "_quiet"),
)
"""Top to bottom. A module may import its own layer and the layers below it; the last row are leaf
utilities. ``scfm/__init__.py`` (the public API) and ``scfm/__main__.py`` stand above all of them."""


def _rank(part: str) -> int:
    for i, layer in enumerate(LAYERS):
        if part == layer or (isinstance(layer, tuple) and part in layer):
            return i
    raise AssertionError(f"scfm.{part} is in no layer of this test: add it to LAYERS (and to DESIGN.md)")


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts in (("__init__",), ("__main__",)):
            continue
        out.append((parts[0], path))
    return out


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(("scfm", *path.relative_to(ROOT).parts[:-1]))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            if module != "scfm":
                found.append((node.lineno, module))
                continue
            for alias in node.names:  # `from scfm import x`: a submodule, or a name of the API facade
                sub = (ROOT / f"{alias.name}.py").is_file() or (ROOT / alias.name).is_dir()
                found.append((node.lineno, f"scfm.{alias.name}" if sub else "scfm"))
    return found


def test_imports_point_down_the_layer_order():
    upward = []
    for part, path in _modules():
        mine = _rank(part)
        for line, module in _imports(path):
            bits = module.split(".")
            if bits[0] != "scfm":
                continue
            if len(bits) == 1:
                upward.append(f"{path.relative_to(ROOT)}:{line} imports the scfm package (the API facade)")
            elif _rank(bits[1]) < mine:
                upward.append(f"{path.relative_to(ROOT)}:{line} ({part}) imports {module} (a layer above)")
    assert not upward, "\n".join(upward)


def test_argparse_is_imported_by_the_command_layer_only():
    users = [
        str(path.relative_to(ROOT))
        for part, path in _modules()
        if part != "commands" and any(m == "argparse" for _, m in _imports(path))
    ]
    assert not users


def _family_names() -> set[str]:
    from scfm.models.adapters import get_all_adapters

    return set(get_all_adapters())


def test_no_module_outside_models_names_a_model_family():
    families = _family_names()
    assert {"flux", "sd3", "wan"} <= families
    named = []
    for part, path in _modules():
        if part == "models":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.lower() in families:
                named.append(f"{path.relative_to(ROOT)}:{node.lineno} the literal {node.value!r}")
        for line, module in _imports(path):
            if module.startswith("scfm.models.") and module.split(".")[2] in families:
                named.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not named, "\n".join(named)


@pytest.mark.parametrize("family", ["flux", "sd3", "wan"])
def test_family_traits_come_from_the_adapter(family):
    from scfm.models.adapters import get_adapter

    cls = get_adapter(family)
    true_cfg = family != "flux"
    assert cls.true_cfg is true_cfg
    assert cls.default_guidance == 3.5
    assert cls.passes_per_step(3.5) == (2 if true_cfg else 1)
    assert cls.passes_per_step(0.0) == 1
    assert cls.pipeline_guidance_scale(3.5) == (4.5 if true_cfg else 3.5)
    assert set(cls.guidance_kwargs(2.0, "baked")) == ({"guidance_scale", "cfg_mode"} if true_cfg else set())


def test_a_new_family_is_one_adapter_class(monkeypatch):
    """A family registered from outside scfm gets its NFE per step and default guidance from its own class."""
    import types

    from scfm.commands.eval import make_generators
    from scfm.models import adapters

    class ToyTransformer(__import__("torch").nn.Module):
        pass

    class ToyAdapter(adapters.VelocityAdapter):
        transformer_class_name = "ToyTransformer"
        true_cfg = True
        default_guidance = 5.0

    monkeypatch.setitem(adapters.ADAPTERS, "toy", ToyAdapter)
    pipe = types.SimpleNamespace(transformer=ToyTransformer())
    args = types.SimpleNamespace(guidance=None, teacher_guidance=0.0, shift=1.0, teacher_shift=None)
    _, _, teacher_nfe, student_nfe = make_generators(pipe, args)
    assert (teacher_nfe, student_nfe) == (1, 2)
