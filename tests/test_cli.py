"""``legodnn-runtime``: every bad invocation is one error line and the right exit code.

One table of bad command lines (exit 2: the command line is wrong; exit 1: a legodnn
error such as a missing, foreign or stale store), ``--debug`` tracebacks, and good runs
on a small profiled store built once for the module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from zoo import build

from legodnn import (
    AutoBlockManager,
    BlockProfiler,
    BlockRetrainer,
    CommonModelManager,
    LatencyEstimator,
)
from legodnn.online.cli import main
from legodnn.online.runtime import OnDeviceRuntime

SIZE = (1, 3, 32, 32)

# user factories for --model, written to a folder put on sys.path by the tests
FACTORIES = '''
import torch

def raises():
    raise RuntimeError("boom in the factory")

def returns_none():
    return None

def tiny():
    return torch.nn.Linear(2, 2)

NOT_CALLABLE = 3
'''


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    """A profiled FunctionalNet store (two sparsities, one retraining epoch on 16 samples)
    and its broken variants, keyed by the placeholders the table uses."""
    root = tmp_path_factory.mktemp("cli")
    model, mm = build("functional"), CommonModelManager()
    bm = AutoBlockManager([0.0, 0.5], model, mm, SIZE, verbose=False)
    bm.extract_all_blocks(str(root / "compressed"))
    g = torch.Generator().manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)),
                        batch_size=16)
    good = root / "trained"
    BlockRetrainer(model, bm, mm, str(root / "compressed"), str(good), 1, loader, verbose=False).train_all_blocks()
    BlockProfiler(model, bm, mm, str(good), loader, SIZE, "cpu", verbose=False).profile_all_blocks()
    LatencyEstimator(bm, mm, str(good), 2, SIZE, "cpu", num_threads=1, verbose=False).profile_all_blocks(
        num_compositions=0)

    def variant(name: str) -> Path:
        path = root / name
        shutil.copytree(good, path)
        return path

    (variant("no_block_profile") / "block_profile.json").unlink()
    (variant("no_latency_profile") / "latency_profile.json").unlink()
    stale = variant("stale") / "block_profile.json"
    profile = json.loads(stale.read_text())
    profile["weights_digest"] = "0" * 64  # as if the blocks were retrained after profiling
    stale.write_text(json.dumps(profile))
    (root / "empty").mkdir()
    (root / "a_file").write_text("not a store")
    (root / "factories").mkdir()
    (root / "factories" / "cli_factories.py").write_text(FACTORIES)
    (root / "factories" / "cli_broken_import.py").write_text("import cli_no_such_dependency\n")
    return {f"<{p.name}>": str(p) for p in root.iterdir()} | {"<missing>": str(root / "missing")}


def run(argv: List[str], paths: Dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """``main(argv)`` with placeholders replaced; returns (code, stdout, stderr)."""
    monkeypatch.syspath_prepend(paths["<factories>"])
    code = main([paths.get(a, a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def ok(*extra: str) -> List[str]:
    """A good command line with ``extra`` appended (argparse keeps the last of a repeated option)."""
    return ["--blocks", "<trained>", "--model", "zoo:FunctionalNet", "--duration", "0.05", *extra]


USAGE, LEGODNN = 2, 1
CUDA = torch.cuda.is_available()

BAD = [
    # argparse's own
    ("no arguments", [], USAGE, ["required", "--blocks", "--model"]),
    ("no --model", ["--blocks", "<trained>"], USAGE, ["required", "--model"]),
    ("unknown option", ok("--speed", "3"), USAGE, ["unrecognized arguments", "--speed"]),
    ("option without value", ok("--threads"), USAGE, ["--threads", "expected one argument"]),
    ("both memory budgets", ok("--memory-fraction", "0.5", "--max-memory-mb", "10"), USAGE, ["not allowed with"]),
    # ranges, checked by argparse types
    ("threads 0", ok("--threads", "0"), USAGE, ["--threads", ">= 1", "got 0"]),
    ("threads -1", ok("--threads", "-1"), USAGE, ["--threads", ">= 1", "got -1"]),
    ("threads 1.5", ok("--threads", "1.5"), USAGE, ["--threads", "whole number", "'1.5'"]),
    ("threads text", ok("--threads", "many"), USAGE, ["--threads", "whole number", "'many'"]),
    ("duration 0", ok("--duration", "0"), USAGE, ["--duration", "> 0", "got 0"]),
    ("duration -1", ok("--duration", "-1"), USAGE, ["--duration", "> 0", "got -1"]),
    ("duration nan", ok("--duration", "nan"), USAGE, ["--duration", "got nan"]),
    ("memory fraction 2", ok("--memory-fraction", "2"), USAGE, ["--memory-fraction", "(0, 1]", "got 2"]),
    ("memory fraction 0", ok("--memory-fraction", "0"), USAGE, ["--memory-fraction", "(0, 1]", "got 0"]),
    ("memory fraction text", ok("--memory-fraction", "half"), USAGE, ["--memory-fraction", "a number", "'half'"]),
    ("max memory -5", ok("--max-memory-mb", "-5"), USAGE, ["--max-memory-mb", "> 0", "got -5"]),
    ("max memory inf", ok("--max-memory-mb", "inf"), USAGE, ["--max-memory-mb", "finite", "got inf"]),
    ("max latency 0", ok("--max-latency-ms", "0"), USAGE, ["--max-latency-ms", "> 0", "got 0"]),
    ("max latency nan", ok("--max-latency-ms", "nan"), USAGE, ["--max-latency-ms", "got nan"]),
    ("poll -1", ok("--poll", "-1"), USAGE, ["--poll", "> 0", "got -1"]),
    ("poll inf", ok("--poll", "inf"), USAGE, ["--poll", "finite", "got inf"]),
    # devices
    ("device bogus", ok("--device", "bogus"), USAGE, ["--device='bogus'", "not a device torch knows"]),
    ("device cuda without GPU", ok("--device", "cuda"), USAGE, ["'cuda'", "CUDA GPU", "has none"]),
    ("device cuda:99", ok("--device", "cuda:99"), USAGE, ["--device='cuda:99'"]),
    # the model factory and its keyword arguments
    ("model without colon", ok("--model", "zoo"), USAGE, ["'package.module:function'", "got 'zoo'"]),
    ("model empty function", ok("--model", "zoo:"), USAGE, ["'package.module:function'", "got 'zoo:'"]),
    ("unknown module", ok("--model", "cli_nowhere:f"), USAGE, ["'cli_nowhere:f'", "no module named 'cli_nowhere'"]),
    ("module with a missing import", ok("--model", "cli_broken_import:f"), USAGE,
     ["'cli_broken_import:f'", "importing 'cli_broken_import' failed", "cli_no_such_dependency"]),
    ("unknown function", ok("--model", "zoo:NoSuchNet"), USAGE, ["'zoo:NoSuchNet'", "no attribute 'NoSuchNet'"]),
    ("not callable", ok("--model", "cli_factories:NOT_CALLABLE"), USAGE, ["NOT_CALLABLE", "not a function"]),
    ("factory raises", ok("--model", "cli_factories:raises"), USAGE,
     ["'cli_factories:raises'", "RuntimeError", "boom in the factory"]),
    ("factory returns None", ok("--model", "cli_factories:returns_none"), USAGE,
     ["'cli_factories:returns_none'", "returned a NoneType", "not a torch.nn.Module"]),
    ("factory rejects kwargs", ok("--model-kwargs", '{"depth": 3}'), USAGE, ["TypeError", "depth", '{"depth": 3}']),
    ("kwargs not JSON", ok("--model-kwargs", "{num_classes: 10}"), USAGE, ["--model-kwargs", "not valid JSON"]),
    ("kwargs a list", ok("--model-kwargs", "[10]"), USAGE, ["--model-kwargs", "JSON object", "JSON list"]),
    ("kwargs a number", ok("--model-kwargs", "10"), USAGE, ["--model-kwargs", "JSON object", "JSON int"]),
    # the store: its own legodnn error, exit 1
    ("store missing", ok("--blocks", "<missing>"), LEGODNN, ["missing'", "does not exist"]),
    ("store is a file", ok("--blocks", "<a_file>"), LEGODNN, ["a_file'", "does not exist"]),
    ("folder not a store", ok("--blocks", "<empty>"), LEGODNN, ["empty'", "not a legodnn blocks directory"]),
    ("no block profile", ok("--blocks", "<no_block_profile>"), LEGODNN, ["block_profile.json is missing"]),
    ("no latency profile", ok("--blocks", "<no_latency_profile>"), LEGODNN, ["latency_profile.json is missing"]),
    ("stale profile", ok("--blocks", "<stale>"), LEGODNN, ["block_profile.json", "measured other weights"]),
    ("another model's store", ok("--model", "zoo:sequential_net"), LEGODNN, ["different model architecture"]),
    ("model that cannot take the input", ok("--model", "cli_factories:tiny"), LEGODNN, ["cannot trace", "shapes"]),
    ("infeasible budget", ok("--max-memory-mb", "0.001", "--no-fallback"), LEGODNN,
     ["smallest configuration needs", "max_memory"]),
]


NEEDS_NO_GPU = pytest.mark.skipif(CUDA, reason="this machine has a GPU")


@pytest.mark.parametrize("argv, code, words", [
    pytest.param(argv, code, words, id=name, marks=NEEDS_NO_GPU if "without GPU" in name else ())
    for name, argv, code, words in BAD
])
def test_bad_invocation(argv, code, words, paths, monkeypatch, capsys) -> None:
    got, out, err = run(argv, paths, monkeypatch, capsys)
    assert got == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("legodnn-runtime: error: "), err
    assert "Traceback" not in err and not out
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize("argv, code, words", [
    (ok("--blocks", "<missing>"), LEGODNN, ["StoreError", "does not exist"]),
    (ok("--model", "cli_factories:raises"), USAGE, ["RuntimeError: boom in the factory", "in raises"]),
])
def test_debug_shows_the_traceback(argv, code, words, paths, monkeypatch, capsys) -> None:
    got, _, err = run(argv + ["--debug"], paths, monkeypatch, capsys)
    assert got == code
    assert "Traceback (most recent call last)" in err and "legodnn-runtime: error:" not in err
    assert all(w in err for w in words), err


def test_serves(paths, monkeypatch, capsys) -> None:
    code, out, err = run(ok("--duration", "0.3", "--max-memory-mb", "0.1", "--threads", "1", "--poll", "0.05"),
                         paths, monkeypatch, capsys)
    assert code == 0, err
    assert out.startswith("served ") and "budget change(s)" in out
    assert "error" not in err


def test_duration_inf_serves_until_interrupted(paths, monkeypatch, capsys) -> None:
    calls = []

    def infer(self, x):
        calls.append(x)
        if len(calls) == 3:
            raise KeyboardInterrupt  # what Ctrl-C does to the serving loop

    monkeypatch.setattr(OnDeviceRuntime, "infer", infer)
    code, out, err = run(ok("--duration", "inf", "--memory-fraction", "0.5"), paths, monkeypatch, capsys)
    assert code == 0, err
    assert out.startswith("served 2 inferences")


def test_help(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--duration" in out and "until interrupted" in out and "--debug" in out


@pytest.mark.slow
def test_module_entry_point() -> None:
    """``python -m legodnn.online.cli`` turns main's return into the process's exit code."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "legodnn.online.cli", "--blocks", "x", "--model", "m:f",
                           "--threads", "0"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "legodnn-runtime: error: --threads must be a whole number >= 1, got 0; e.g. --threads 4 "
        "(see legodnn-runtime --help)"]
