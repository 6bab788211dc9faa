"""The demos run end to end and report what they claim."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

DEMOS = Path(__file__).resolve().parents[1] / "demos"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"demos_{name}", DEMOS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
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


@pytest.mark.slow
def test_image_classification_demo_quick(tmp_path: Path) -> None:
    demo = _load("image_classification_demo")
    out = tmp_path / "run"
    result = demo.main(["--quick", "--quiet", "--out", str(out), "--device", "cpu"])
    assert result["dataset"] == "digits" and "digits" in result["data_description"]
    assert result["teacher_accuracy"] >= 0.6  # trained: chance is 0.1 (measured 0.925 on 200 test images)
    assert result["threads"] >= 1 and result["settings"]["base_width"] == 8
    assert result["num_blocks"] == 8 and result["num_descendants"] == 8 * len(demo.SPARSITIES)
    rows = result["rows"]
    assert [r["label"] for r in rows] == ["teacher", "all 0.3", "all 0.6", "all 0.8", "random 1", "random 2"]
    teacher = rows[0]
    assert teacher["sparsities"] == [0.0] * 8
    assert teacher["measured_accuracy"] == teacher["estimated_accuracy"] == result["teacher_accuracy"]
    assert teacher["estimated_accuracy_multiplicative"] == pytest.approx(result["teacher_accuracy"])
    assert result["accuracy_model"]["best"] in ("fitted", "additive", "multiplicative")
    assert result["accuracy_model"]["mean_abs_error_fitted"] is not None  # the profiler fitted the estimate
    uniform = rows[:4]
    for smaller, larger in zip(uniform[1:], uniform):
        assert smaller["size_bytes"] < larger["size_bytes"] and smaller["flops"] < larger["flops"]
    assert all(0.0 <= r["measured_accuracy"] <= 1.0 for r in rows)
    assert {"data", "teacher", "extract", "retrain", "profile", "table", "plots"} <= set(result["timings"])
    assert set(result["cpu_seconds"]) == set(result["timings"])
    assert [o["latency_fraction"] for o in result["online"]] == [b[0] for b in demo.BUDGETS]
    assert all(Path(p).is_file() for p in result["plots"]) and len(result["plots"]) == 2
    assert (out / "results.json").is_file() and (out / "trained_blocks" / "block_profile.csv").is_file()
    # the saved teacher loads back with the same accuracy (what --teacher does)
    data = demo.load_data(None, quick=True)
    settings = demo.Settings.defaults("digits", quick=True)
    fresh = demo.build_teacher(10, "cpu", base_width=settings.base_width, seed=1)
    assert demo.load_teacher(fresh, out / "teacher.safetensors", data, "cpu") == result["teacher_accuracy"]
    # retraining again into the same directory, for another teacher (other blocks), starts afresh
    # (the retrainer alone would refuse the training state of the first run)
    other = demo.build_teacher(10, "cpu", base_width=settings.base_width, seed=1)
    bm, mm, _ = demo.extract_blocks(other, out / "blocks", "cpu", verbose=False)
    history = demo.retrain_blocks(other, bm, mm, out / "blocks", out / "trained_blocks", data, settings, "cpu",
                                  verbose=False)
    assert len(history) == 8 * 3 and (out / "trained_blocks" / "manifest.json").is_file()


def test_image_classification_demo_data_choice(tmp_path: Path) -> None:
    from test_cv_tasks_data import write_cifar10

    demo = _load("image_classification_demo")
    fallback = demo.load_data(tmp_path / "empty", quick=True, download=False)
    assert fallback.name == "digits" and "CIFAR-10 unavailable" in fallback.description
    write_cifar10(tmp_path / "cifar")
    cifar = demo.load_data(tmp_path / "cifar", quick=True, download=False)
    assert cifar.name == "cifar10" and cifar.num_classes == 10 and "CIFAR-10 from" in cifar.description
    x, _ = next(iter(cifar.test_loader))
    assert x.shape[1:] == (3, 32, 32)


def test_default_threads_leave_busy_cores_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    demo = _load("image_classification_demo")
    monkeypatch.setattr(demo.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(demo, "busy_cores_now", lambda: 0.1)
    assert demo.default_threads() == (2, "2 cores, 0.1 busy now")
    monkeypatch.setattr(demo, "busy_cores_now", lambda: 1.3)
    assert demo.default_threads()[0] == 1
    # without the kernel's counters: the load average
    monkeypatch.setattr(demo, "busy_cores_now", lambda: None)
    monkeypatch.setattr(demo.os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    assert demo.default_threads()[0] == 2
    monkeypatch.setattr(demo.os, "getloadavg", lambda: (1.2, 1.0, 1.0))
    assert demo.default_threads()[0] == 1
    monkeypatch.setattr(demo.os, "getloadavg", lambda: (7.5, 7.0, 6.0))
    threads, why = demo.default_threads()
    assert threads == 1 and "load average 7.5" in why


class _Counters:
    """A /proc/stat whose counters move on between reads."""

    def __init__(self, *lines: str) -> None:
        self.lines = list(lines)

    def read_text(self) -> str:
        return self.lines.pop(0) + "\ncpu0 1 2 3 4\n"


def test_busy_cores_come_from_the_kernels_counters(monkeypatch: pytest.MonkeyPatch) -> None:
    demo = _load("image_classification_demo")
    monkeypatch.setattr(demo.os, "cpu_count", lambda: 2)
    # 100 ticks pass: 30 user, 5 system, 60 idle, 5 iowait -> 35% of two cores busy
    stat = _Counters("cpu  100 0 50 1000 10 0 0 0 0 0", "cpu  130 0 55 1060 15 0 0 0 0 0")
    assert demo.busy_cores_now(0.0, stat) == pytest.approx(0.7)
    assert demo.busy_cores_now(0.0, _Counters("cpu  1 1 1 1 1", "cpu  1 1 1 1 1")) is None  # no time passed
    assert demo.busy_cores_now(0.0, _Counters("intr 5", "intr 6")) is None
    assert demo.busy_cores_now(0.0, Path("/nonexistent/stat")) is None


@pytest.mark.slow
def test_image_classification_notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The notebook as shipped (QUICK = True) runs, calls legodnn itself and trains a real teacher."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(DEMOS / "image_classification.ipynb", as_version=4)
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert re.search(r"^QUICK = True", source, flags=re.M)  # the quick path is the default
    assert "from legodnn import" in source and "image_classification_demo" not in source
    # the kernel imports legodnn and cv_tasks from this checkout, installed or not; one torch thread
    root = str(DEMOS.parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    accuracy = float(re.search(r"teacher test accuracy ([\d.]+)%", text).group(1))
    assert accuracy >= 60, text  # chance is 10%
    assert "65,536 descendant models" in text and "random compositions" in text and "of the teacher" in text
    store = tmp_path / "runs" / "image_classification_notebook" / "trained_blocks"
    assert (store / "block_profile.csv").is_file() and (store / "front_size.png").is_file()
