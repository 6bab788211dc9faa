"""The documentation builds: ``mkdocs build --strict`` (mkdocs.yml, docs/, the API pages generated
from the docstrings by mkdocstrings) with no warning, so a broken link, a missing page or a
docstring mkdocstrings cannot render fails the tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    try:
        import mkdocs  # noqa: F401
        import mkdocstrings  # noqa: F401
    except ImportError as exc:  # the test extra has them: a missing one is an installation to fix, not a skip
        raise AssertionError(f"{exc.name} is not installed: pip install -e '.[test]' (or '.[docs]')") from exc
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert not re.search(r"^(WARNING|ERROR)\b", log, flags=re.M), log[-4000:]
    api = (tmp_path / "site" / "api" / "blockmanager" / "index.html").read_text(encoding="utf-8")
    assert "extract_all_blocks" in api  # the reference is generated from the docstrings, not empty


def test_every_api_page_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = sorted(p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs" / "api").glob("*.md"))
    assert pages and all(p in nav for p in pages), [p for p in pages if p not in nav]
