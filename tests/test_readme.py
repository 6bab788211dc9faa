"""The Python examples of README and of the docs pages that continue it run as written, in order,
as one session (README's pipeline example makes the store the later pages use)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# README first; each later page says that its examples run after README's, in this session
SESSION = [README, DOCS / "blockmanager.md", DOCS / "online.md", DOCS / "tasks.md"]
# pages whose Python blocks are fragments (`...`), need another store, ONNX Runtime or torchrun
NOT_RUN = {"accuracy.md", "distributed.md", "onnxruntime.md", "plots.md", "store.md"}


def _blocks(page: Path) -> list:
    return re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)


def test_every_page_with_python_is_run_or_listed() -> None:
    run = {p.name for p in SESSION}
    pages = [p.name for p in sorted(DOCS.glob("*.md")) if _blocks(p)]
    assert set(pages) <= run | NOT_RUN, f"add these to SESSION or NOT_RUN: {set(pages) - run - NOT_RUN}"


@pytest.mark.slow
def test_readme_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = [(page.name, code) for page in SESSION for code in _blocks(page)]
    assert len(blocks) >= 9
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme"}
    for i, (name, code) in enumerate(blocks):
        exec(compile(code, f"{name}[python {i}]", "exec"), namespace)
    assert (tmp_path / "runs" / "readme" / "trained" / "latency_profile.json").exists()
