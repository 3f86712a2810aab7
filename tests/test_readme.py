"""The README's Python example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "README.md", "exec"), {"__name__": "__readme__"})
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("2-step distance")][0]
    teacher, student = map(float, re.findall(r"(\d+\.\d+)", line))
    assert student < 0.5 * teacher
    assert (tmp_path / "my_student" / "lora.safetensors").is_file()
