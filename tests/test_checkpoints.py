"""Mid-epoch checkpoints of both retraining stages: an interrupted run, resumed, equals an uninterrupted one.

The training data is a shuffling DataLoader (its order comes from torch's global
generator at the start of every epoch) and the block loss draws from the same
generator at every call, like dropout would: a resumed run matches only if it skips
the batches already done *and* puts the generators back where they were.
"""

from __future__ import annotations

import functools
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from zoo import build

from legodnn import AutoBlockManager, CommonModelManager, LegoDNNError
from legodnn.offline import BlockRetrainer, CompositionRetrainer
from legodnn.offline.checkpoints import CheckpointFolder
from legodnn.offline.composition import SandwichSampler, distillation_loss

SIZE = (1, 3, 32, 32)
SPARSITIES = [0.0, 0.4, 0.8]
TESTS = Path(__file__).parent
BATCHES = 6  # per epoch


def train_loader(own_generator: bool = False) -> DataLoader:
    """Shuffled by torch's global generator, or by one of its own (``DataLoader(generator=)``)."""
    g = torch.Generator().manual_seed(0)
    n = 8 * BATCHES
    data = TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))
    return DataLoader(data, batch_size=8, shuffle=True,
                      generator=torch.Generator().manual_seed(5) if own_generator else None)


def val_batches() -> list:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g))]


def noisy_mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE times a random factor from torch's global generator (a stand-in for dropout)."""
    return F.mse_loss(out, target) * (1 + 0.1 * torch.rand(()))


def noisy_distillation(student: Any, teacher: Any) -> torch.Tensor:
    return distillation_loss(student, teacher) * (1 + 0.1 * torch.rand(()))


def block_run(compressed: Path, target: Path, loss_fn: Callable = noisy_mse, seed: Optional[int] = 0,
              own_generator: bool = False, **options: Any) -> BlockRetrainer:
    """Two block epochs and one composition epoch; ``seed`` sets the global generator first."""
    model, mm = build("functional"), CommonModelManager()
    bm = AutoBlockManager(SPARSITIES, model, mm, SIZE, verbose=False)
    if seed is not None:
        torch.manual_seed(seed)
    retrainer = BlockRetrainer(model, bm, mm, str(compressed), str(target), 2, train_loader(own_generator), val_batches(),
                               verbose=False, loss_fn=loss_fn, composition_epochs=1, **options)
    retrainer.train_all_blocks()
    return retrainer


def weights(store: Path) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    manifest = json.loads((store / "manifest.json").read_text())
    files = [manifest["frame"]["file"]] + [d["file"] for b in manifest["blocks"] for d in b["descendants"]]
    return {f"{f}/{k}": v for f in files for k, v in load_file(str(store / f)).items()}


def assert_same_store(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    ta, tb = (json.loads((p / "manifest.json").read_text())["trained"] for p in (a, b))
    assert ta == tb  # epochs, best losses, best composition epoch
    # the final state of each stage: history, best losses, and the last weights (not only the best ones kept)
    for sub in ("training", "training/composition"):
        assert (a / sub / "state.json").is_file() == (b / sub / "state.json").is_file()
        if not (a / sub / "state.json").is_file():
            continue
        ca, cb = (CheckpointFolder(p / sub).load(CheckpointFolder(p / sub).read_state()) for p in (a, b))
        numbering = ("files", "checkpoint")
        assert {k: v for k, v in ca.state.items() if k not in numbering} == \
            {k: v for k, v in cb.state.items() if k not in numbering}
        assert ca.last.keys() == cb.last.keys() and all(torch.equal(ca.last[k], cb.last[k]) for k in ca.last)


def assert_only_named(folder: Path) -> None:
    """The folder's checkpoint files are exactly those its state.json names."""
    state = json.loads((folder / "state.json").read_text())
    files = {p.name for p in folder.iterdir() if p.is_file() and p.name not in ("state.json", "history.json")}
    assert files == set(state["files"].values())


def assert_complete(folder: Path) -> Dict[str, Any]:
    """state.json names files that all exist and load; returns the state."""
    checkpoints = CheckpointFolder(folder)
    state = checkpoints.read_state()
    assert state is not None
    checkpoint = checkpoints.load(state)
    assert checkpoint.last and checkpoint.best and checkpoint.rng is not None
    return state


class Interrupt(Exception):
    pass


def dying_after(calls: int, inner: Callable) -> Callable:
    """``inner``, raising :class:`Interrupt` at call number ``calls``."""
    count = {"n": 0}

    @functools.wraps(inner)  # the same loss name in the manifest
    def loss(*args: Any) -> torch.Tensor:
        count["n"] += 1
        if count["n"] == calls:
            raise Interrupt
        return inner(*args)

    loss.count = count  # type: ignore[attr-defined]
    return loss


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    """A compressed store and the uninterrupted run everything is compared with."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the killed subprocess: the same kernels, the same bits
    root = tmp_path_factory.mktemp("checkpoints")
    model, mm = build("functional"), CommonModelManager()
    AutoBlockManager(SPARSITIES, model, mm, SIZE, verbose=False).extract_all_blocks(str(root / "compressed"))
    block_run(root / "compressed", root / "straight")  # default checkpoint options: none within these epochs
    block_run(root / "compressed", root / "straight-own-generator", own_generator=True)
    yield root
    torch.set_num_threads(threads)


KEYS = 3 * 2  # blocks x sparsities above 0: block loss calls per batch


@pytest.mark.parametrize("die_at, steps, position, resumed_batches", [
    # in the middle of the 4th batch of epoch 2, checkpoints every 2 steps: resumes after its 2nd batch
    (KEYS * (BATCHES + 1 + 3) + 2, 2, 2, 4),
    # at the first batch of epoch 2, no mid-epoch checkpoint: resumes at the epoch's start
    (KEYS * (BATCHES + 1) + 1, None, None, BATCHES),
], ids=["mid-epoch", "epoch-start"])
@pytest.mark.parametrize("own_generator", [False, True], ids=["global-generator", "loader-generator"])
def test_block_stage_resumes(setup, tmp_path: Path, die_at: int, steps: Optional[int], position: Optional[int],
                             resumed_batches: int, own_generator: bool) -> None:
    root = setup
    with pytest.raises(Interrupt):
        block_run(root / "compressed", tmp_path / "t", loss_fn=dying_after(die_at, noisy_mse), checkpoint_steps=steps,
                  own_generator=own_generator)
    state = assert_complete(tmp_path / "t" / "training")
    assert state["epochs_done"] == 1 and (state["position"] or {}).get("step") == position
    assert not (tmp_path / "t" / "manifest.json").exists()
    counting = dying_after(-1, noisy_mse)
    # another global state, a fresh loader generator: both restored
    block_run(root / "compressed", tmp_path / "t", loss_fn=counting, seed=1234, own_generator=own_generator)
    # the resumed run trained only the batches not yet done (and one held-out batch)
    assert counting.count["n"] == KEYS * (resumed_batches + 1)
    assert_same_store(root / ("straight-own-generator" if own_generator else "straight"), tmp_path / "t")


def test_composition_stage_resumes_mid_epoch(setup, tmp_path: Path) -> None:
    root = setup
    model, mm = build("functional"), CommonModelManager()
    bm = AutoBlockManager(SPARSITIES, model, mm, SIZE, verbose=False)

    def run(target: Path, seed: int, loss_fn: Callable, **options: Any) -> None:
        torch.manual_seed(seed)
        CompositionRetrainer(model, bm, mm, str(root / "straight"), str(target), 2, train_loader(), val_batches(),
                             verbose=False, loss_fn=loss_fn, **options).train_all_compositions()

    run(tmp_path / "straight", 0, noisy_distillation)
    sampler = SandwichSampler(tuple(SPARSITIES), 3, num_random=1, seed=0, every_level=True)  # the stage's defaults
    per_step = [[len(sampler.sample(epoch, step)) for step in range(BATCHES)] for epoch in range(2)]
    validation = len(sampler.validation_set())  # one held-out batch
    # one validation before training, epoch 1, validation, then die in step 5 of epoch 2
    dying = dying_after(validation + sum(per_step[0]) + validation + sum(per_step[1][:4]) + 2, noisy_distillation)
    with pytest.raises(Interrupt):
        run(tmp_path / "t", 0, dying, checkpoint_steps=3)
    folder = tmp_path / "t" / "training" / "composition"
    state = assert_complete(folder)
    assert (state["epochs_done"], state["position"]["step"]) == (1, 3)
    counting = dying_after(-1, noisy_distillation)
    run(tmp_path / "t", 99, counting)
    assert counting.count["n"] == sum(per_step[1][3:]) + validation  # steps 4 to 6 of epoch 2, one validation
    assert_same_store(tmp_path / "straight", tmp_path / "t")
    assert_only_named(folder)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_kill_inside_a_checkpoint_leaves_the_previous_one(setup, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Dying between the files of a checkpoint: state.json still names the previous one,
    and what the dying save left (complete but unnamed files, half-written temporaries)
    is never read."""
    from legodnn.offline import checkpoints

    root = setup
    real = checkpoints.save_torch_atomic
    calls = {"n": 0}

    def dying_save(path: Any, obj: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2 * 3 + 1:  # the optimizer file of the 4th checkpoint: its weights are on disk
            raise Interrupt
        real(path, obj)

    monkeypatch.setattr(checkpoints, "save_torch_atomic", dying_save)
    with pytest.raises(Interrupt):
        block_run(root / "compressed", tmp_path / "t", checkpoint_steps=1)
    monkeypatch.setattr(checkpoints, "save_torch_atomic", real)
    folder = tmp_path / "t" / "training"
    state = assert_complete(folder)
    assert state["checkpoint"] == 3 and state["position"]["step"] == 3
    assert (folder / "c4.last.safetensors").is_file()  # written, never named
    # what a writer killed mid-file would leave: garbage under the next names and a temporary
    (folder / "c4.last.safetensors").write_bytes(b"\0" * 100)
    (folder / "c4.optim.pt").write_bytes(b"garbage")
    (folder / f".state.json.{_dead_pid()}-0123abcd.tmp").write_text('{"epochs_done": 9')
    block_run(root / "compressed", tmp_path / "t", seed=7)
    assert_same_store(root / "straight", tmp_path / "t")
    assert_only_named(folder)
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_state_from_before_mid_epoch_checkpoints_resumes(setup, tmp_path: Path) -> None:
    """Block state written by earlier versions (per-descendant files, epoch ends only) is read and replaced."""
    from safetensors.torch import save_file

    from legodnn.blockmanager.store import sparsity_tag
    from legodnn.offline.composition_retrainer import _unflatten

    root = setup
    model, mm = build("functional"), CommonModelManager()
    bm = AutoBlockManager(SPARSITIES, model, mm, SIZE, verbose=False)
    out = tmp_path / "t"
    BlockRetrainer(model, bm, mm, str(root / "compressed"), str(out), 1, train_loader(), val_batches(),
                   verbose=False, composition_epochs=0).train_all_blocks()
    folder = out / "training"
    state = json.loads((folder / "state.json").read_text())
    keys = [(b, s) for b in bm.block_names for s in SPARSITIES if s > 0]
    checkpoint = CheckpointFolder(folder).load(state)
    optim = checkpoint.optim
    for kind, tensors in (("last", checkpoint.last), ("best", checkpoint.best)):
        for key, t in _unflatten(tensors, keys).items():
            save_file(t, str(folder / f"{key[0]}_s{sparsity_tag(key[1])}.{kind}.safetensors"))
    for key in keys:
        torch.save(optim[f"{key[0]}@{key[1]:g}"], folder / f"{key[0]}_s{sparsity_tag(key[1])}.optim.pt")
    for name in state.pop("files").values():
        (folder / name).unlink()
    del state["checkpoint"], state["position"]
    (folder / "state.json").write_text(json.dumps(state))
    history = BlockRetrainer(model, bm, mm, str(root / "compressed"), str(out), 2, train_loader(), val_batches(),
                             verbose=False, composition_epochs=0).train_all_blocks()
    assert all(len(h["train"]) == 2 for h in history.values())
    assert sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("c")) == \
        ["history.json", "state.json"]


def test_composition_state_from_before_mid_epoch_checkpoints_resumes(setup, tmp_path: Path) -> None:
    """Composition state written by earlier versions (files named by the epoch) is read and replaced."""
    root = setup
    model, mm = build("functional"), CommonModelManager()
    bm = AutoBlockManager(SPARSITIES, model, mm, SIZE, verbose=False)

    def run(loss_fn: Callable) -> Any:
        return CompositionRetrainer(model, bm, mm, str(root / "straight"), str(tmp_path / "t"), 2, train_loader(),
                                    val_batches(), verbose=False, loss_fn=loss_fn).train_all_compositions()

    sampler = SandwichSampler(tuple(SPARSITIES), 3, num_random=1, seed=0, every_level=True)  # the stage's defaults
    validation = len(sampler.validation_set())
    with pytest.raises(Interrupt):  # at the first step of epoch 2
        run(dying_after(validation + sum(len(sampler.sample(0, i)) for i in range(BATCHES)) + validation + 1,
                        distillation_loss))
    folder = tmp_path / "t" / "training" / "composition"
    state = json.loads((folder / "state.json").read_text())
    assert state["epochs_done"] == 1
    for kind, name in state.pop("files").items():
        if kind == "rng":
            (folder / name).unlink()
        else:
            (folder / name).rename(folder / f"epoch1.{kind}.{name.rsplit('.', 1)[1]}")
    del state["checkpoint"], state["position"]
    (folder / "state.json").write_text(json.dumps(state))
    history = run(distillation_loss)
    assert len(history.train) == 2 and history.train[0] == state["train"][0]  # epoch 1 was not redone
    assert_only_named(folder)


def test_checkpoint_options_are_checked(setup, tmp_path: Path) -> None:
    root = setup
    model, mm = build("functional"), CommonModelManager()
    bm = AutoBlockManager(SPARSITIES, model, mm, SIZE, verbose=False)
    for options, words in (({"checkpoint_seconds": 0}, "checkpoint_seconds"),
                           ({"checkpoint_seconds": float("nan")}, "checkpoint_seconds"),
                           ({"checkpoint_steps": 0}, "checkpoint_steps"),
                           ({"checkpoint_steps": 2.0}, "checkpoint_steps")):
        with pytest.raises(LegoDNNError, match=words):
            BlockRetrainer(model, bm, mm, str(root / "compressed"), str(tmp_path / "t"), 1, train_loader(),
                           val_batches(), **options)
        with pytest.raises(LegoDNNError, match=words):
            CompositionRetrainer(model, bm, mm, str(root / "compressed"), str(tmp_path / "c"), 1, train_loader(),
                                 val_batches(), **options)


# -- a real SIGKILL at a random moment --------------------------------------------------------------

_KILLED = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    torch.set_num_threads(1)
    from legodnn.offline import checkpoints
    import test_checkpoints as t

    real = checkpoints.CheckpointFolder.save

    def announced(self, *args, **kwargs):
        real(self, *args, **kwargs)
        print("saved", flush=True)

    checkpoints.CheckpointFolder.save = announced
    print("ready", flush=True)
    t.block_run(t.Path(sys.argv[1]), t.Path(sys.argv[2]), checkpoint_steps=1)
    print("done", flush=True)
""")


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_resume(setup, tmp_path: Path) -> None:
    """The training subprocess announces each checkpoint; it is killed a random time after
    a random one of them (perhaps in the middle of the next save), then resumed here."""
    root = setup
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    saves = 2 * (BATCHES + 1) + (BATCHES + 1)  # a save per step and per epoch end, in both stages
    wait_for, extra = rng.randint(1, saves - 4), rng.uniform(0.0, 0.1)
    script = tmp_path / "killed.py"
    script.write_text(_KILLED.format(tests=str(TESTS)))
    target = tmp_path / "t"
    proc = subprocess.Popen([sys.executable, str(script), str(root / "compressed"), str(target)],
                            stdout=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert proc.stdout.readline().strip() == b"ready"
        for _ in range(wait_for):
            assert proc.stdout.readline().strip() == b"saved", f"seed {seed}"
        try:
            proc.wait(timeout=extra)
        except subprocess.TimeoutExpired:
            pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended on its own (seed {seed})"
    state = assert_complete(target / "training")
    if state["epochs_done"] == 2 and (target / "training" / "composition" / "state.json").exists():
        assert_complete(target / "training" / "composition")
    block_run(root / "compressed", target, seed=seed)
    assert_same_store(root / "straight", target)
