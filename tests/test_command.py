"""``legodnn``: the whole pipeline through the command, in-process, on a tiny model and data.

A module fixture runs extract -> retrain -> profile -> latency (the steps that write the
store) on a four-conv model and a synthetic ImageFolder of 16x16 PNGs; the tests then
read what they wrote and run optimize, inspect, serve and export-onnx on it. A table of
bad command lines checks that each is one error line with exit code 2 (the command line
is wrong) or 1 (a legodnn error), and every example a ``--help`` shows is checked to
parse.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch

from legodnn.cli import main
from legodnn.cli.main import COMMANDS, build_parser

PNG = b"\x89PNG\r\n\x1a\n"

# the user's model code, written to a folder put on sys.path (what --model package.module:function imports)
FACTORIES = '''
import torch
from torch import nn


def tiny(num_classes=3):
    """Four convolutions, BatchNorm, one pooling: two blocks of two convs at ratio 0.5."""
    def conv(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(*conv(3, 8), *conv(8, 12), nn.MaxPool2d(2), *conv(12, 12), *conv(12, 16),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))


def other():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 2))
'''

MODEL = ["--model", "cmd_models:tiny"]
COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}


def write_images(root: Path, per_class: Dict[str, int]) -> None:
    """One folder per class of 16x16 PNGs: the class's colour plus noise, so it can be learnt."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, n in per_class.items():
        for name, colour in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                noise = torch.randint(-40, 40, (16, 16, 3), generator=g)
                pixels = (torch.tensor(colour) + noise).clamp(0, 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{i}.png")


def run(argv: List[str]) -> Tuple[int, str, str]:
    """``main(argv)`` with stdout and stderr captured: (code, out, err)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def ok(argv: List[str]) -> str:
    """Run a command that must succeed; returns its stdout."""
    code, out, err = run(argv)
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """The tiny model through extract, retrain (1 epoch), profile (--plot) and latency (--plot).

    Three sparsities, not two: with two blocks at two sparsities there are fewer distinct
    compositions than composition retraining's validation set asks for (every level and
    four random ones), and drawing it never ends.
    """
    root = tmp_path_factory.mktemp("command")
    (root / "code").mkdir()
    (root / "code" / "cmd_models.py").write_text(FACTORIES)
    sys.path.insert(0, str(root / "code"))
    write_images(root / "data", {"train": 8, "test": 4})
    threads = torch.get_num_threads()  # the commands' --threads 1 sets it for the process: put it back after
    paths = {"root": root, "data": root / "data", "blocks": root / "blocks", "trained": root / "trained"}
    data = ["--data", paths["data"], "--batch-size", "8"]
    # the teacher's weights as a user has them: a safetensors file, read by every step that needs them
    from safetensors.torch import save_file

    sys.modules.pop("cmd_models", None)
    import cmd_models

    torch.manual_seed(0)
    save_file(cmd_models.tiny().state_dict(), str(root / "teacher.safetensors"))
    paths["weights"] = root / "teacher.safetensors"
    weights = ["--weights", paths["weights"]]
    paths["extract_out"] = ok(["extract", *MODEL, *weights, "--sparsities", "0,0.3,0.6", "--input-size", "1,3,16,16",
                               "--compress-layer-max-ratio", "0.5", "--out", paths["blocks"], "--threads", "1",
                               "--quiet"])
    paths["retrain_out"] = ok(["retrain", *MODEL, *weights, "--blocks", paths["blocks"], "--out", paths["trained"],
                               *data, "--epochs", "1", "--composition-epochs", "1", "--threads", "1", "--quiet"])
    paths["profile_out"] = ok(["profile", *MODEL, *weights, "--blocks", paths["trained"], *data, "--compositions", "3",
                               "--validate", "3", "--plot", "--threads", "1", "--quiet"])
    paths["latency_out"] = ok(["latency", *MODEL, "--blocks", paths["trained"], "--threads", "1", "--runs", "2",
                               "--compositions", "2", "--plot", "--quiet"])
    yield paths
    torch.set_num_threads(threads)
    sys.path.remove(str(root / "code"))
    sys.modules.pop("cmd_models", None)


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000, path
    assert path.read_bytes()[:8] == PNG


def test_offline_steps_write_the_store(store) -> None:
    assert store["extract_out"].startswith("extracted 2 blocks") and "6 descendants" in store["extract_out"]
    assert "retrained 4 descendants for 1 epoch(s)" in store["retrain_out"]
    assert "teacher accuracy" in store["profile_out"] and "on 12 images" in store["profile_out"]
    assert "estimates on 3 new compositions" in store["profile_out"]
    assert "teacher" in store["latency_out"] and "1 thread(s)" in store["latency_out"]
    for name in ("manifest.json", "block_profile.json", "accuracy_estimate.json", "accuracy_model.json",
                 "latency_profile.json"):
        assert (store["trained"] / name).is_file(), name
    for name in ("accuracy_drop.png", "accuracy_estimates.png", "latency_estimates.png"):
        assert_png(store["trained"] / name)


def test_progress_bars_go_to_stderr_and_quiet_silences_them(store, tmp_path: Path) -> None:
    argv = ["extract", *MODEL, "--sparsities", "0,0.3,0.6", "--input-size", "1,3,16,16", "--compress-layer-max-ratio",
            "0.5", "--out"]
    code, out, err = run([*argv, tmp_path / "loud"])
    assert code == 0 and out.startswith("extracted") and "descendant blocks" in err
    code, out, err = run([*argv, tmp_path / "quiet", "--quiet"])
    assert code == 0 and out.startswith("extracted") and err == ""


def test_optimize_prints_picks_and_draws_the_front(store) -> None:
    out = ok(["optimize", *MODEL, "--blocks", store["trained"], "--max-memory-mb", "0.001,1000",
              "--out", store["root"] / "picks.json", "--plot", "--quiet"])
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["budget", "sparsity", "per"]
    assert "no (closest)" in lines[1] and lines[2].rstrip().endswith("yes")  # 1 kB cannot be met, 1 GB can
    assert "0 0" in lines[2]  # with all the memory it wants, the teacher
    picks = json.loads((store["root"] / "picks.json").read_text())["picks"]
    assert [p["feasible"] for p in picks] == [False, True] and picks[1]["sparsities"] == [0.0, 0.0]
    assert_png(store["trained"] / "front_size.png")
    assert_png(store["trained"] / "front_latency.png")
    sweep = ok(["optimize", *MODEL, "--blocks", store["trained"], "--sweep", "3", "--quiet"])
    assert len(sweep.splitlines()) == 1 + 3 + 1


def test_inspect_shows_blocks_profiles_and_hashes(store) -> None:
    out = ok(["inspect", "--blocks", store["trained"]])
    assert "2 blocks" in out and "input 1x3x16x16" in out and "sparsities 0, 0.3, 0.6" in out
    assert "block_profile.json: accuracy" in out and "latency_profile.json: cpu" in out and "current" in out
    rows = [line for line in out.splitlines() if line.startswith("block_")]
    assert len(rows) == 6 and all(len(r.split()[-1]) == 12 for r in rows)  # sha256 prefixes
    summary = json.loads(ok(["inspect", "--blocks", store["trained"], "--json"]))
    assert len(summary["descendants"]) == 6 and all(d["metric_drop"] is not None for d in summary["descendants"])
    assert summary["profiles"]["block_profile.json"]["fresh"] is True
    untrained = ok(["inspect", "--blocks", store["blocks"]])
    assert "no profiles yet" in untrained and "not trained" in untrained


def test_serve(store) -> None:
    code, out, err = run(["serve", *MODEL, "--blocks", store["trained"], "--duration", "0.2", "--max-memory-mb", "0.01",
                          "--quiet"])
    assert code == 0, err
    assert out.startswith("served ") and "budget change(s)" in out


def test_legodnn_runtime_is_serve(store) -> None:
    from legodnn.online.cli import main as runtime_main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = runtime_main(["--blocks", str(store["trained"]), *MODEL, "--duration", "0"])
    assert code == 2 and err.getvalue().startswith("legodnn-runtime: error: --duration must be")


def test_export_onnx(store) -> None:
    pytest.importorskip("onnx")
    out = ok(["export-onnx", *MODEL, "--blocks", store["trained"], "--sparsities", "0.6", "--out",
              store["root"] / "small.onnx", "--quiet"])
    assert out.startswith("exported sparsities 0.6 0.6")
    ok(["export-onnx", *MODEL, "--blocks", store["trained"], "--max-memory-mb", "1000", "--out",
        store["root"] / "picked.onnx", "--quiet"])
    import onnx

    for name in ("small.onnx", "picked.onnx"):
        onnx.checker.check_model(onnx.load(str(store["root"] / name)))


@pytest.mark.slow
def test_python_m_legodnn_and_the_serve_path_import_no_offline_code(store) -> None:
    """``python -m legodnn serve`` runs with tqdm, torchvision and matplotlib unimportable (a device)."""
    code = textwrap.dedent(f"""
        import importlib.abc, sys
        BLOCKED = ("tqdm", "torchvision", "matplotlib", "onnx", "cv_tasks")
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(name + " is not on this device")
        sys.meta_path.insert(0, Block())
        sys.path.insert(0, {str(store["root"] / "code")!r})
        sys.argv = ["legodnn", "serve", "--model", "cmd_models:tiny", "--blocks", {str(store["trained"])!r},
                    "--duration", "0.1", "--quiet"]
        import runpy
        try:
            runpy.run_module("legodnn", run_name="__main__")
        except SystemExit as exc:
            bad = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED or m.startswith("legodnn.offline.block"))
            print("exit", exc.code, bad)
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.stdout.startswith("served ") and proc.stdout.rstrip().endswith("exit 0 []"), proc.stdout + proc.stderr


# -- bad command lines ------------------------------------------------------------
USAGE, LEGODNN = 2, 1
EXTRACT = ["extract", *MODEL, "--out", "<new>"]
OPTIMIZE = ["optimize", *MODEL, "--blocks", "<trained>"]
EXPORT = ["export-onnx", *MODEL, "--blocks", "<trained>", "--out", "<new>"]
RETRAIN = ["retrain", *MODEL, "--blocks", "<blocks>", "--out", "<new>", "--data", "<data>"]

BAD = [
    ("no command", [], USAGE, "legodnn", ["choose a command", "extract", "inspect"]),
    ("unknown command", ["train"], USAGE, "legodnn", ["invalid choice: 'train'"]),
    ("no flags", ["extract"], USAGE, "legodnn extract", ["required", "--model", "--out"]),
    ("inspect without --blocks", ["inspect"], USAGE, "legodnn inspect", ["required", "--blocks"]),
    ("unknown flag", [*EXTRACT, "--speed", "3"], USAGE, "legodnn", ["unrecognized arguments", "--speed"]),
    ("model without colon", ["extract", "--model", "tiny", "--out", "<new>"], USAGE, "legodnn extract",
     ["'package.module:function'", "got 'tiny'"]),
    ("unknown module", ["extract", "--model", "cmd_nowhere:f", "--out", "<new>"], USAGE, "legodnn extract",
     ["no module named 'cmd_nowhere'"]),
    ("unknown function", ["extract", "--model", "cmd_models:huge", "--out", "<new>"], USAGE, "legodnn extract",
     ["no attribute 'huge'"]),
    ("unknown cv_tasks model", ["extract", "--model", "cv_tasks:no_such_net", "--out", "<new>"], USAGE,
     "legodnn extract", ["no attribute 'no_such_net'", "registered model name"]),
    ("kwargs the model rejects", [*EXTRACT, "--model-kwargs", '{"depth": 3}'], USAGE, "legodnn extract",
     ["TypeError", "depth"]),
    ("kwargs a list", [*EXTRACT, "--model-kwargs", "[3]"], USAGE, "legodnn extract", ["JSON object", "JSON list"]),
    ("sparsity 1.5", [*EXTRACT, "--sparsities", "0,1.5"], USAGE, "legodnn extract", ["--sparsities", "[0, 1)"]),
    ("sparsities text", [*EXTRACT, "--sparsities", "half"], USAGE, "legodnn extract", ["comma-separated"]),
    ("input size one number", [*EXTRACT, "--input-size", "32"], USAGE, "legodnn extract",
     ["--input-size", "1,3,32,32"]),
    ("device bogus", [*EXTRACT, "--device", "bogus"], USAGE, "legodnn extract", ["not a device torch knows"]),
    ("threads 0", [*EXTRACT, "--threads", "0"], USAGE, "legodnn extract", ["--threads", ">= 1"]),
    ("weights missing", [*EXTRACT, "--weights", "<missing>"], USAGE, "legodnn extract", ["--weights", "no such file"]),
    ("weights pickled", [*EXTRACT, "--weights", "<pickle>"], USAGE, "legodnn extract",
     ["not a safetensors file", "never unpickles"]),
    ("weights of another model", ["extract", "--model", "cmd_models:other", "--weights", "<weights>", "--out",
                                  "<new>"], USAGE, "legodnn extract", ["do not fit this Sequential"]),
    ("input too small for the model", [*EXTRACT, "--input-size", "1,3,1,1"], LEGODNN, "legodnn extract",
     ["dummy input of size (1, 3, 1, 1)"]),
    ("out holds user files", ["extract", *MODEL, "--out", "<data>"], LEGODNN, "legodnn extract",
     ["legodnn did not write"]),
    ("data nowhere", [*RETRAIN[:-1], "<missing>"], USAGE, "legodnn retrain", ["not 'digits', 'cifar10:ROOT'"]),
    ("data without train/", [*RETRAIN[:-1], "<data>/train"], USAGE, "legodnn retrain", ["train/ and test/"]),
    ("cifar10 not there", [*RETRAIN[:-1], "cifar10:<missing>"], USAGE, "legodnn retrain", ["cifar10:"]),
    ("epochs 0", [*RETRAIN, "--epochs", "0"], USAGE, "legodnn retrain", ["--epochs", ">= 1"]),
    ("store missing", [*RETRAIN[:3], "--blocks", "<missing>", *RETRAIN[5:]], LEGODNN, "legodnn retrain",
     ["does not exist"]),
    ("another model's store", ["latency", "--model", "cmd_models:other", "--blocks", "<trained>"], LEGODNN,
     "legodnn latency", ["different model architecture"]),
    ("backend unknown", ["latency", *MODEL, "--blocks", "<trained>", "--backend", "tensorrt"], USAGE,
     "legodnn latency", ["invalid choice: 'tensorrt'"]),
    ("optimize without profiles", ["optimize", *MODEL, "--blocks", "<blocks>"], LEGODNN, "legodnn optimize",
     ["block_profile.json is missing"]),
    ("budget list with 0", [*OPTIMIZE, "--max-memory-mb", "1,0"], USAGE, "legodnn optimize",
     ["--max-memory-mb", "> 0", "got 0"]),
    ("sweep 0", [*OPTIMIZE, "--sweep", "0"], USAGE, "legodnn optimize", ["--sweep", ">= 1"]),
    ("serve duration 0", ["serve", *MODEL, "--blocks", "<trained>", "--duration", "0"], USAGE, "legodnn serve",
     ["--duration", "> 0"]),
    ("export two ways", [*EXPORT, "--sparsities", "0.6", "--max-memory-mb", "1"], USAGE, "legodnn export-onnx",
     ["not allowed with"]),
    ("export sparsities of the wrong length", [*EXPORT, "--sparsities", "0,0,0"], LEGODNN, "legodnn export-onnx",
     ["got 3 sparsities for 2 blocks"]),
    ("export sparsity not stored", [*EXPORT, "--sparsities", "0.5"], LEGODNN, "legodnn export-onnx",
     ["sparsity 0.5 is not in the blocks directory"]),
    ("export infeasible budget", [*EXPORT, "--max-memory-mb", "0.000001"], LEGODNN, "legodnn export-onnx",
     ["infeasible budget"]),
    ("inspect missing store", ["inspect", "--blocks", "<missing>"], LEGODNN, "legodnn inspect", ["does not exist"]),
    ("inspect not a store", ["inspect", "--blocks", "<data>"], LEGODNN, "legodnn inspect",
     ["not a legodnn blocks directory"]),
]


@pytest.fixture(scope="module")
def placeholders(store) -> Dict[str, str]:
    pickle_file = store["root"] / "teacher.pt"
    torch.save({"w": torch.zeros(1)}, pickle_file)
    return {"<trained>": str(store["trained"]), "<blocks>": str(store["blocks"]), "<data>": str(store["data"]),
            "<weights>": str(store["weights"]), "<pickle>": str(pickle_file), "<missing>": str(store["root"] / "nope"),
            "<new>": str(store["root"] / "new")}


def fill(argv: List[str], placeholders: Dict[str, str]) -> List[str]:
    out = []
    for a in argv:
        for key, value in placeholders.items():
            a = a.replace(key, value)
        out.append(a)
    return out


# found by argparse and the flags' types: their error line points to the command's --help
PARSE_ERRORS = {"no flags", "unknown flag", "sparsity 1.5", "threads 0", "device bogus", "epochs 0", "export two ways"}


@pytest.mark.parametrize("name, argv, code, prog, words", [pytest.param(*case, id=case[0]) for case in BAD])
def test_bad_invocation(name, argv, code, prog, words, placeholders) -> None:
    got, out, err = run(fill(argv, placeholders))
    lines = err.strip().splitlines()
    assert got == code, err
    assert len(lines) == 1 and lines[0].startswith(f"{prog}"), err
    assert ": error: " in lines[0] and "Traceback" not in err and not out
    for word in words:
        assert word in lines[0], (word, lines[0])
    if name in PARSE_ERRORS:  # argparse's own checks point to the help
        assert lines[0].endswith(f"(see {prog} --help)")


def test_debug_shows_the_traceback(placeholders) -> None:
    code, _, err = run(fill(["inspect", "--blocks", "<missing>", "--debug"], placeholders))
    assert code == LEGODNN and "Traceback (most recent call last)" in err and "StoreError" in err


def test_help_and_version() -> None:
    code, out, _ = run(["--help"])
    assert code == 0 and all(c.name in out for c in COMMANDS)
    code, out, _ = run(["--version"])
    assert code == 0 and out.startswith("legodnn ")
    for command in COMMANDS:
        code, out, _ = run([command.name, "--help"])
        assert code == 0 and "examples:" in out and f"legodnn {command.name}" in out, command.name


@pytest.mark.parametrize("command", COMMANDS, ids=[c.name for c in COMMANDS])
def test_help_examples_parse(command) -> None:
    """Every example line of every --help is a command line the parser accepts."""
    examples = command.examples.replace("\\\n", " ").splitlines()[1:]
    assert examples
    for line in examples:
        argv = shlex.split(line)
        assert argv[:2] == ["legodnn", command.name], line
        args = build_parser().parse_args(argv[1:])
        assert args.run is command.run


def test_docs_examples_parse() -> None:
    """Every ``legodnn ...`` command line in docs/cli.md is one the parser accepts."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```\n")[1::2]]
    lines = [line for b in blocks for line in b.replace("\\\n", " ").splitlines() if line.startswith("legodnn ")]
    assert {line.split()[1] for line in lines} == {c.name for c in COMMANDS}
    for line in lines:
        args = build_parser().parse_args(shlex.split(line)[1:])
        assert callable(args.run), line


@pytest.mark.parametrize("spec, kwargs, cls, size", [
    ("cv_tasks:cifar_resnet18", {"base_width": 8}, "CifarResNet", (1, 3, 32, 32)),
    ("cv_tasks:get_model", {"name": "cifar_densenet_tiny"}, "CifarDenseNet", (1, 3, 32, 32)),  # the first CLI's form
    ("torchvision:resnet18", {"num_classes": 10}, "ResNet", (1, 3, 224, 224)),
    ("timm:resnet18", {"num_classes": 10}, "ResNet", (1, 3, 224, 224)),
])
def test_named_models(spec, kwargs, cls, size) -> None:
    from legodnn.cli.models import build_model, default_input_size

    pytest.importorskip(spec.partition(":")[0])
    model = build_model(spec, kwargs)
    assert type(model).__name__ == cls and not model.training
    assert default_input_size(spec, model) == size


# -- retrain and profile under torchrun ------------------------------------------------------------

PLAIN = '''
from torch import nn


def plain(num_classes=3):
    """Four convolutions without BatchNorm (whose batch statistics would differ between a batch
    and its halves on two ranks): two blocks of two convs at ratio 0.5."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(12, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 16, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))
'''


def write_flat_images(root: Path, per_class: Dict[str, int]) -> None:
    """16x16 PNGs of one colour each (a shade per image): random crops, resizes and flips leave
    them as they are, so the training images do not depend on who draws the random numbers."""
    from PIL import Image

    for split, n in per_class.items():
        for c, (name, colour) in enumerate(COLOURS.items()):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                shade = tuple(max(0, min(255, v + 7 * i - 20 * c)) for v in colour)
                Image.new("RGB", (16, 16), shade).save(root / split / name / f"{i}.png")


@pytest.mark.slow
def test_retrain_and_profile_under_torchrun_match_one_process(tmp_path: Path) -> None:
    """``torchrun --nproc_per_node 2 -m legodnn retrain`` with 4 images per process and step
    gives one process's store at 8 per step over the same data order (the weights within
    1e-5, as in tests/test_distributed.py), rank 0 alone prints, and ``profile`` under
    torchrun gives one process's profile."""
    from safetensors.torch import save_file
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    from legodnn.cli.data import load_data
    from legodnn.cli.models import block_manager_for, build_model, load_weights
    from legodnn.offline import BlockRetrainer
    from legodnn.offline.holdout import split_holdout

    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "cmd_plain_models.py").write_text(PLAIN)
    sys.path.insert(0, str(tmp_path / "code"))
    threads = torch.get_num_threads()
    try:
        write_flat_images(tmp_path / "data", {"train": 8, "test": 4})
        sys.modules.pop("cmd_plain_models", None)
        import cmd_plain_models

        torch.manual_seed(0)
        save_file(cmd_plain_models.plain().state_dict(), str(tmp_path / "teacher.safetensors"))
        model = ["--model", "cmd_plain_models:plain", "--weights", tmp_path / "teacher.safetensors"]
        ok(["extract", *model, "--sparsities", "0,0.3,0.6", "--input-size", "1,3,16,16", "--compress-layer-max-ratio",
            "0.5", "--out", tmp_path / "blocks", "--threads", "1", "--quiet"])

        # one process: the command's loaders, in the order the two processes' DistributedSamplers share
        teacher = build_model("cmd_plain_models:plain", {})
        load_weights(teacher, str(tmp_path / "teacher.safetensors"))
        bm, mm, store = block_manager_for(str(tmp_path / "blocks"), teacher, "cpu", False)
        train, _ = load_data(str(tmp_path / "data"), store.manifest.model_input_size, 8, None, 0)
        train, held = split_holdout(train)
        ordered = DataLoader(train.dataset, batch_size=8, sampler=DistributedSampler(train.dataset, 1, 0, seed=0))
        BlockRetrainer(teacher, bm, mm, str(tmp_path / "blocks"), str(tmp_path / "one"), 1, ordered, held,
                       verbose=False, composition_epochs=1).train_all_blocks()
        ok(["profile", *model, "--blocks", tmp_path / "one", "--data", tmp_path / "data", "--batch-size", "4",
            "--compositions", "3", "--validate", "0", "--threads", "1", "--quiet"])

        env = {**os.environ, "OMP_NUM_THREADS": "1", "LEGODNN_DIST_TIMEOUT": "60",
               "PYTHONPATH": os.pathsep.join([str(tmp_path / "code"), str(Path(__file__).resolve().parents[1]),
                                              os.environ.get("PYTHONPATH", "")])}
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                    "legodnn"]
        common = [*model, "--data", tmp_path / "data", "--batch-size", "4", "--threads", "1", "--quiet"]
        procs = {}
        for name, argv in (("retrain", ["retrain", *common, "--blocks", tmp_path / "blocks", "--out", tmp_path / "two",
                                        "--epochs", "1", "--composition-epochs", "1"]),
                           ("profile", ["profile", *common, "--blocks", tmp_path / "two", "--compositions", "3",
                                        "--validate", "0"])):
            procs[name] = subprocess.run([*torchrun, *map(str, argv)], env=env, capture_output=True, text=True,
                                         timeout=180)
            assert procs[name].returncode == 0, procs[name].stderr[-4000:]
    finally:
        torch.set_num_threads(threads)
        sys.path.remove(str(tmp_path / "code"))
        sys.modules.pop("cmd_plain_models", None)

    lines = procs["retrain"].stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("retrained 4 descendants for 1 epoch(s) on 2 processes"), lines
    assert len(procs["profile"].stdout.splitlines()) == 1 and "on 12 images" in procs["profile"].stdout
    from safetensors.torch import load_file

    def weights(path: Path) -> Dict[str, torch.Tensor]:
        manifest = json.loads((path / "manifest.json").read_text())
        files = [manifest["frame"]["file"]] + [d["file"] for b in manifest["blocks"] for d in b["descendants"]]
        return {f"{f}/{k}": v for f in files for k, v in load_file(str(path / f)).items()}

    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert one.keys() == two.keys()
    assert max(float((one[k] - two[k]).abs().max()) for k in one) < 1e-5
    assert max(float((one[k] - weights(tmp_path / "blocks")[k]).abs().max()) for k in one) > 1e-3  # it trained
    profiles = [json.loads((tmp_path / p / "block_profile.json").read_text()) for p in ("one", "two")]
    assert profiles[0]["num_test_samples"] == profiles[1]["num_test_samples"] == 12
    assert [b["metric"] for b in profiles[0]["blocks"]] == [b["metric"] for b in profiles[1]["blocks"]]


def test_fast_path_flags(store, tmp_path: Path) -> None:
    """``--amp`` and ``--channels-last`` reach the stages; fp16 on the CPU is a wrong command line."""
    data = ["--data", store["data"], "--batch-size", "8", "--threads", "1", "--quiet"]
    weights = ["--weights", store["weights"]]
    out = ok(["retrain", *MODEL, *weights, "--blocks", store["blocks"], "--out", tmp_path / "bf16", *data,
              "--epochs", "1", "--composition-epochs", "0", "--amp", "bf16", "--channels-last"])
    assert "retrained 4 descendants" in out and "processes" not in out
    state = json.loads((tmp_path / "bf16" / "training" / "state.json").read_text())
    assert state["precision"] == {"amp": "bf16", "channels_last": True}
    assert "teacher accuracy" in ok(["profile", *MODEL, *weights, "--blocks", tmp_path / "bf16", *data,
                                     "--compositions", "0", "--validate", "0", "--amp", "bf16", "--channels-last"])
    code, _, err = run(["retrain", *MODEL, *weights, "--blocks", store["blocks"], "--out", tmp_path / "fp16", *data,
                        "--amp", "fp16"])
    assert code == 2 and "--amp='fp16' needs a CUDA device" in err and "bf16" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "fp16").exists()
    code, _, err = run(["profile", *MODEL, "--blocks", store["trained"], *data, "--amp", "fp32"])
    assert code == 2 and "invalid choice: 'fp32'" in err
