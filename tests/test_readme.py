"""The Python examples of README and docs/tasks.md run as written, in order, as one session."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
TASKS = README.parent / "docs" / "tasks.md"  # the task examples moved off the landing page; same session


@pytest.mark.slow
def test_readme_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = [code for page in (README, TASKS)
              for code in re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)]
    assert len(blocks) >= 7
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"README.md[python {i}]", "exec"), namespace)
    assert (tmp_path / "runs" / "readme" / "trained" / "latency_profile.json").exists()
