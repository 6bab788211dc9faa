"""The blocks directory: ownership rules, atomic writes under SIGKILL, stale profiles, the device path."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from zoo import build

from legodnn import (
    AutoBlockManager,
    BlockProfiler,
    BlockRetrainer,
    BlockStore,
    CommonModelManager,
    CorruptedStoreError,
    LatencyEstimator,
    NotOursError,
    OnDeviceRuntime,
    ScalingOptimizer,
    StaleProfileError,
)
from legodnn.blockmanager import switcher as switcher_module
from legodnn.blockmanager.atomic import _TEMP
from legodnn.online.runtime import Budget

SIZE = (1, 3, 32, 32)
SPARSITIES = [0.0, 0.5]
TESTS = Path(__file__).resolve().parent


def _loader(n: int = 32) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))
    return DataLoader(data, batch_size=16)


def _temps(*folders: Path) -> list:
    return [p for f in folders if f.is_dir() for p in f.rglob("*") if _TEMP.match(p.name)]


@pytest.fixture(scope="module")
def profiled(tmp_path_factory: pytest.TempPathFactory):
    """A functional model extracted, retrained one epoch, profiled (accuracy and latency)."""
    root = tmp_path_factory.mktemp("store")
    model = build("functional")
    mm = CommonModelManager()
    bm = AutoBlockManager(SPARSITIES, model, mm, SIZE, verbose=False)
    bm.extract_all_blocks(str(root / "compressed"))
    BlockRetrainer(model, bm, mm, str(root / "compressed"), str(root / "trained"), 1, _loader(),
                   verbose=False, composition_epochs=0).train_all_blocks()
    BlockProfiler(model, bm, mm, str(root / "trained"), _loader(), SIZE, "cpu", verbose=False).profile_all_blocks(
        num_compositions=0)
    LatencyEstimator(bm, mm, str(root / "trained"), 2, SIZE, "cpu", num_threads=torch.get_num_threads(),
                     verbose=False).profile_all_blocks(num_compositions=0)
    return root, model, mm, bm


# -- never destroy what is not ours ----------------------------------------------------------


def test_refuses_a_users_folder_and_file(profiled, tmp_path: Path) -> None:
    _, model, _, bm = profiled
    user = tmp_path / "thesis"
    (user / "sub").mkdir(parents=True)
    (user / "thesis.tex").write_text("my thesis")
    (user / "sub" / "data.csv").write_text("1,2")
    with pytest.raises(NotOursError, match="thesis.tex"):
        bm.extract_all_blocks(str(user))
    assert (user / "thesis.tex").read_text() == "my thesis" and (user / "sub" / "data.csv").read_text() == "1,2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis"]  # nothing left beside it either

    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    with pytest.raises(NotOursError, match="is a file"):
        bm.extract_all_blocks(str(notes))
    assert notes.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "thesis"]

    with pytest.raises(NotOursError, match="thesis.tex"):
        BlockRetrainer(model, bm, CommonModelManager(), str(profiled[0] / "compressed"), str(user), 1, _loader())
    assert sorted(p.name for p in user.iterdir()) == ["sub", "thesis.tex"]


def test_a_folder_being_marked_by_another_rank_is_ours(tmp_path: Path) -> None:
    """Under torchrun every rank claims the target folder while rank 0 writes its work
    marker: a folder holding only legodnn's temporary file of that write is claimable
    (CI once saw rank 1 refuse it); a user's file beside one is still refused."""
    from legodnn.blockmanager.atomic import temp_path
    from legodnn.blockmanager.store import WORK_MARKER, claim_path

    target = tmp_path / "t"
    target.mkdir()
    temp_path(target / WORK_MARKER).write_text("")  # the marker's write in progress
    assert claim_path(target, "f") == target.absolute()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(NotOursError, match="notes.txt"):
        claim_path(target, "f")


def test_same_model_refreshes_other_model_needs_overwrite(profiled, tmp_path: Path) -> None:
    _, _, mm, bm = profiled
    target = tmp_path / "blocks"
    bm.extract_all_blocks(str(target))
    first = BlockStore(target).manifest
    bm.extract_all_blocks(str(target))  # the same model's store is refreshed
    assert BlockStore(target).manifest.weights_digest == first.weights_digest
    (tmp_path / "empty").mkdir()
    bm.extract_all_blocks(str(tmp_path / "empty"))  # an empty folder is ours to fill

    other = AutoBlockManager(SPARSITIES, build("cifar_resnet18"), mm, SIZE, verbose=False)
    with pytest.raises(NotOursError, match="overwrite=True"):
        other.extract_all_blocks(str(target))
    assert BlockStore(target).fingerprint == bm.fingerprint
    other.extract_all_blocks(str(target), overwrite=True)
    assert BlockStore(target).fingerprint == other.fingerprint
    assert not _temps(tmp_path)


def test_written_files_follow_the_umask(profiled) -> None:
    root = profiled[0]
    mask = os.umask(0)
    os.umask(mask)
    for path in (root / "trained").iterdir():
        if path.is_file():
            assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path.name


# -- leftovers of dead writers ----------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_are_removed_on_open(profiled, tmp_path: Path) -> None:
    bm = profiled[3]
    store = tmp_path / "blocks"
    bm.extract_all_blocks(str(store))
    dead, live = _dead_pid(), os.getpid()
    leftovers = [tmp_path / f".blocks.{dead}-0123abcd.writing", store / f".frame.safetensors.{dead}-89abcdef.tmp"]
    leftovers[0].mkdir()
    (leftovers[0] / "frame.safetensors").write_bytes(b"half")
    leftovers[1].write_bytes(b"half")
    in_use = store / f".block_0_s0p5.safetensors.{live}-0123abcd.tmp"  # a live writer's: left alone
    in_use.write_bytes(b"busy")
    unrelated = store / ".my.notes.tmp"
    unrelated.write_text("not ours")
    BlockStore(store)
    assert not any(p.exists() for p in leftovers)
    assert in_use.exists() and unrelated.exists()


def test_a_killed_swap_without_exchange_is_put_back(profiled, tmp_path: Path) -> None:
    """Where no atomic exchange exists the old store is renamed aside first; a writer killed
    between the two renames leaves it there, and the next open puts it back."""
    bm = profiled[3]
    store = tmp_path / "blocks"
    bm.extract_all_blocks(str(store))
    digest = BlockStore(store).weights_digest
    aside = tmp_path / f".blocks.{_dead_pid()}-0123abcd.old"
    os.replace(store, aside)
    assert BlockStore(store).weights_digest == digest
    assert not aside.exists()


# -- checked reads --------------------------------------------------------------------------------


@pytest.mark.parametrize("edit, words", [
    (lambda m: m["blocks"][0]["descendants"][1].update(file="../outside.safetensors"), "plain file name"),
    (lambda m: m["blocks"][0]["descendants"][1].update(file="/etc/passwd"), "plain file name"),
    (lambda m: m["frame"].update(sha256=""), "SHA-256"),
    (lambda m: m.pop("parts"), "incomplete or malformed"),
])
def test_manifest_is_checked_when_read(profiled, tmp_path: Path, edit, words: str) -> None:
    store = tmp_path / "blocks"
    shutil.copytree(profiled[0] / "compressed", store)
    manifest = json.loads((store / "manifest.json").read_text())
    edit(manifest)
    (store / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptedStoreError, match=words):
        BlockStore(store)


def test_manifest_round_trips(profiled) -> None:
    from legodnn.blockmanager.manifest import StoreManifest

    manifest = BlockStore(profiled[0] / "trained").manifest
    assert StoreManifest.from_json(json.loads(json.dumps(manifest.to_json()))) == manifest
    assert manifest.trained["epochs"] == 1


# -- profiles know their weights ------------------------------------------------------------------


def test_a_profile_of_other_weights_is_refused(profiled, tmp_path: Path) -> None:
    root, model, mm, bm = profiled
    again = tmp_path / "trained"
    BlockRetrainer(model, bm, mm, str(root / "compressed"), str(again), 2, _loader(), verbose=False,
                   composition_epochs=0).train_all_blocks()
    assert not (again / "block_profile.json").exists()  # a new store starts without profiles
    for name in ("block_profile.json", "latency_profile.json"):
        shutil.copy(root / "trained" / name, again / name)
    with pytest.raises(StaleProfileError, match="profile_all_blocks"):
        ScalingOptimizer(str(again), SIZE, bm)
    with pytest.raises(StaleProfileError):
        ScalingOptimizer.from_store(str(again), build("functional"))
    ScalingOptimizer(str(root / "trained"), SIZE, bm)  # its own profile is accepted


def test_retraining_into_the_same_folder_replaces_it_whole(profiled, tmp_path: Path) -> None:
    root, model, mm, bm = profiled
    target = tmp_path / "trained"
    BlockRetrainer(model, bm, mm, str(root / "compressed"), str(target), 1, _loader(), verbose=False,
                   composition_epochs=0).train_all_blocks()
    BlockProfiler(model, bm, mm, str(target), _loader(), SIZE, "cpu", verbose=False).profile_all_blocks(
        num_compositions=0)
    assert (target / "block_profile.json").exists()
    BlockRetrainer(model, bm, mm, str(root / "compressed"), str(target), 2, _loader(), verbose=False,
                   composition_epochs=0).train_all_blocks()
    assert not (target / "block_profile.json").exists()  # the old weights' profile went with them
    assert BlockStore(target).manifest.trained["epochs"] == 2 and not _temps(tmp_path)


# -- SIGKILL at random moments ------------------------------------------------------------------------

_WRITER = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    from torch.utils.data import DataLoader, TensorDataset
    from zoo import build
    from legodnn import AutoBlockManager, BlockProfiler, BlockRetrainer, CommonModelManager, LatencyEstimator
    torch.set_num_threads(1)
    stage, root = sys.argv[1], sys.argv[2]
    g = torch.Generator().manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(32, 3, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g)),
                        batch_size=16)
    model, mm = build("functional"), CommonModelManager()
    bm = AutoBlockManager({sparsities!r}, model, mm, {size!r}, verbose=False)
    print("ready", flush=True)
    while True:
        if stage == "extract":
            bm.extract_all_blocks(root + "/compressed")
        elif stage == "retrain":
            BlockRetrainer(model, bm, mm, root + "/compressed", root + "/trained", 2, loader, verbose=False,
                           composition_epochs=1).train_all_blocks()
        elif stage == "profile":
            profiler = BlockProfiler(model, bm, mm, root + "/trained", loader, {size!r}, "cpu", verbose=False)
            profiler.profile_all_blocks(num_compositions=3)
            profiler.validate_accuracy_model(2)  # accuracy_model.json
        else:
            LatencyEstimator(bm, mm, root + "/trained", 2, {size!r}, "cpu", num_threads=1,
                             verbose=False).profile_all_blocks(num_compositions=2)
""")


def _check_readable(folder: Path) -> None:
    store = BlockStore(folder)
    for block in store.block_names:
        for s in store.block_sparsity:
            store.descendant_tensors(block, s)
    store.frame_tensors()
    for name in ("block_profile.json", "latency_profile.json", "accuracy_estimate.json", "accuracy_model.json"):
        if (folder / name).exists():
            json.loads((folder / name).read_text())


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["extract", "retrain", "profile", "latency"])
def test_sigkill_leaves_old_or_new_store(profiled, tmp_path: Path, stage: str) -> None:
    root = tmp_path / "work"
    shutil.copytree(profiled[0], root)
    script = tmp_path / "writer.py"
    script.write_text(_WRITER.format(tests=str(TESTS), sparsities=SPARSITIES, size=SIZE))
    rng = random.Random(stage)
    for _ in range(2):
        proc = subprocess.Popen([sys.executable, str(script), stage, str(root)], stdout=subprocess.PIPE,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.stdout.readline().strip() == b"ready"
        try:
            proc.wait(timeout=rng.uniform(0.05, 1.5))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert proc.returncode == -signal.SIGKILL, "the writer ended on its own"
        for folder in (root / "compressed", root / "trained"):
            _check_readable(folder)
        assert not [p for p in _temps(root) if "training" not in p.parts]
    model, mm, bm = profiled[1], profiled[2], profiled[3]
    if stage == "extract":  # redone after the kills, extraction gives the store an uninterrupted run gave
        bm.extract_all_blocks(str(root / "compressed"))
        assert BlockStore(root / "compressed").weights_digest == BlockStore(profiled[0] / "compressed").weights_digest
    # a resumed retraining cleans its own folder too and ends with a complete store
    BlockRetrainer(model, bm, mm, str(root / "compressed"), str(root / "trained"), 2, _loader(), verbose=False,
                   composition_epochs=1).train_all_blocks()
    _check_readable(root / "trained")
    assert not _temps(root)


# -- the device path -------------------------------------------------------------------------------


def test_from_store_traces_once_and_serves(profiled, monkeypatch) -> None:
    root = profiled[0]
    calls = []
    real = switcher_module.trace_model
    monkeypatch.setattr(switcher_module, "trace_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    runtime = OnDeviceRuntime.from_store(str(root / "trained"), build("functional"), lambda: Budget(None, None))
    assert len(calls) == 1
    event = runtime.step()
    assert event is not None and event.result is not None
    x = torch.rand(SIZE)
    assert runtime.infer(x).shape == (1, 10)


_DEVICE = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = ("tqdm", "torchvision", "onnx", "onnxruntime", "scipy")

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is not on this device")
            return None

    sys.meta_path.insert(0, Block())
    sys.path.insert(0, {tests!r})
    import torch
    from zoo import FunctionalNet
    from legodnn.online import Budget, OnDeviceRuntime
    runtime = OnDeviceRuntime.from_store({store!r}, FunctionalNet(), lambda: Budget(None, 1e12))
    event = runtime.step()
    out = runtime.infer(torch.rand({size!r}))
    bad = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED or m.startswith("legodnn.offline.block_"))
    print("ok", tuple(out.shape), event.result.sparsities, bad)
""")


@pytest.mark.slow
def test_device_path_needs_only_torch_numpy_safetensors(profiled, tmp_path: Path) -> None:
    script = tmp_path / "device.py"
    script.write_text(_DEVICE.format(tests=str(TESTS), store=str(profiled[0] / "trained"), size=SIZE))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ok (1, 10)") and out.stdout.rstrip().endswith("[]"), out.stdout


def test_single_output_files_are_not_replaced_unasked(tmp_path: Path) -> None:
    from legodnn.blockmanager.store import claim_file

    mine = tmp_path / "picks.json"
    mine.write_text("the user's")
    with pytest.raises(NotOursError, match="already exists"):
        claim_file(mine)
    assert mine.read_text() == "the user's"
    assert claim_file(mine, overwrite=True) == mine
    with pytest.raises(NotOursError, match="folder"):
        claim_file(tmp_path, overwrite=True)
    assert claim_file(tmp_path / "new.json") == tmp_path / "new.json"
