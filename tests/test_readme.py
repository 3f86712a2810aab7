"""The README's Python example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__"}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("2-step distance")][0]
    teacher, student = map(float, re.findall(r"(\d+\.\d+)", line))
    assert student < 0.5 * teacher
    assert (tmp_path / "my_student" / "lora.safetensors").is_file()

    exec(compile(blocks[1], "README.md", "exec"), namespace)  # the calibration example continues it
    student = namespace["student"]
    scales = student.lora_scales
    assert sorted(scales) == [1, 2, 4]
    assert all(0.0 <= k <= 2.0 * student.trained_scale(n) for n, k in scales.items())  # the search range
