"""The demos run end to end and report what they claim."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

DEMOS = Path(__file__).resolve().parents[1] / "demos"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"demos_{name}", DEMOS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_blockmanager_demo(tmp_path: Path) -> None:
    demo = _load("blockmanager_demo")
    blocks = tmp_path / "blocks"
    result = demo.main(["--out", str(blocks), "--quiet"])
    assert result["num_blocks"] == 8
    assert result["num_descendants"] == 8 * len(demo.SPARSITIES)
    assert result["coverage"] >= 0.9
    assert result["exact"] is True
    assert (blocks / "manifest.json").is_file()
    first, *_, last = result["switches"]
    assert len(first["changed"]) == 8 and first["bytes_loaded"] > 0  # all 0.8, read from disk
    assert last["bytes_loaded"] == 0 and not last["from_disk"]  # a configuration seen before: all cached
    params = [s["params"] for s in result["switches"]]
    assert min(params) == result["switches"][0]["params"] < max(params)
