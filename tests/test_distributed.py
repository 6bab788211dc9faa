"""Data-parallel retraining and profiling under torch.distributed: two gloo processes on the CPU.

The reference is one process over the same data in the same order with the same
number of samples per optimizer step (16: one batch of 16, or a batch of 8 on each of
two ranks). Gradients averaged over two half batches are the full batch's up to
rounding, so the trained weights match within :data:`WEIGHT_TOLERANCE`; the profile
of one store is the same, number for number, as the accuracy counts are integers.
Every rank runs ``tests/dist_job.py`` with one torch thread.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import dist_job
import pytest
import torch
from zoo import build

from legodnn import AutoBlockManager, CommonModelManager, LegoDNNError
from legodnn.model_manager.common_model_manager import TopKAccuracy
from legodnn.offline.distributed import (
    Ranks,
    RankStrided,
    ShardSampler,
    _state,
    combine_accumulators,
    shard_loader,
)

JOB = Path(__file__).parent / "dist_job.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# largest difference of any trained weight between two processes and one (measured: ~1e-7; Adam's
# normalised steps pass rounding differences on at about their own size)
WEIGHT_TOLERANCE = 1e-5
# The process-group timeouts of the failure tests. Under a loaded CI machine one rank can wait
# seconds for the other at an all-reduce, so a short timeout fires before the planned failure
# (seen: rank 1 timed out at 5 s). A kill is noticed at once whatever the timeout, so that case
# gets a long one; the hang must wait the timeout out, so it gets the shortest that load allows.
TIMEOUT_S = {"killed": 120.0, "hung": 20.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: Dict[str, Any], world: int = 2, job: Path = JOB) -> List[subprocess.Popen]:
    """Start ``world`` ranks of ``job`` as torchrun would (its environment variables), without
    an agent that would stop the others when one fails: the test wants to see them do it."""
    port = str(free_port())
    return [subprocess.Popen([sys.executable, str(job), json.dumps(config)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             env={**ENV, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(world),
                                  "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
            for r in range(world)]


def finish(procs: List[subprocess.Popen], timeout: float = 120) -> List[str]:
    """Wait for every rank; their stderr."""
    return [p.communicate(timeout=timeout)[1] for p in procs]


def weights(store: Path) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    manifest = json.loads((store / "manifest.json").read_text())
    files = [manifest["frame"]["file"]] + [d["file"] for b in manifest["blocks"] for d in b["descendants"]]
    return {f"{f}/{k}": v for f in files for k, v in load_file(str(store / f)).items()}


def max_difference(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def ranks_results(out: Path) -> List[Dict[str, Any]]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One process and two (under torchrun, legodnn creating the group) over the same data:
    ``one`` and ``two`` retrained from the same compressed store; ``one-copy`` (``one``'s
    trained store) profiled by the two processes."""
    threads = torch.get_num_threads()
    root = tmp_path_factory.mktemp("distributed")
    model, mm = build("functional"), CommonModelManager()
    AutoBlockManager(dist_job.SPARSITIES, model, mm, dist_job.SIZE, verbose=False).extract_all_blocks(
        str(root / "compressed"))
    dist_job.run({"compressed": str(root / "compressed"), "target": str(root / "one"), "profile": str(root / "one"),
                  "out": str(root / "out-one")})
    torch.set_num_threads(threads)
    shutil.copytree(root / "one", root / "one-copy")
    for name in ("block_profile.json", "block_profile.csv", "accuracy_estimate.json"):
        (root / "one-copy" / name).unlink()
    config = {"compressed": str(root / "compressed"), "target": str(root / "two"), "profile": str(root / "one-copy"),
              "out": str(root / "out-two")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(JOB), json.dumps(config)], env={**ENV, "LEGODNN_DIST_TIMEOUT": "60"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root


@pytest.mark.slow
def test_two_processes_train_and_profile_as_one(runs: Path) -> None:
    root = runs
    one = json.loads((root / "out-one" / "rank0.json").read_text())
    rank0, rank1 = ranks_results(root / "out-two")
    assert (rank0["world"], rank1["world"]) == (2, 2)
    # the ranks agree bit for bit: the weights each handed to the store writer, the losses, the profile
    assert rank0["weights"] == rank1["weights"]
    assert {k: v for k, v in rank0.items() if k != "rank"} == {k: v for k, v in rank1.items() if k != "rank"}
    # and match one process: weights within the tolerance, losses to rounding
    assert max_difference(root / "one", root / "two") < WEIGHT_TOLERANCE
    assert one["history"].keys() == rank0["history"].keys()
    for name, hist in one["history"].items():
        for kind in ("train", "val"):
            assert rank0["history"][name][kind] == pytest.approx(hist[kind], rel=1e-4), (name, kind)
    for got, want in zip(rank0["composition"], one["composition"]):  # train and held-out losses per epoch
        assert got == pytest.approx(want, rel=1e-4)
    ta, tb = (json.loads((root / p / "manifest.json").read_text())["trained"] for p in ("one", "two"))
    assert (ta["epochs"], ta["composition_best_epoch"]) == (tb["epochs"], tb["composition_best_epoch"])
    # the profile of one store is the one-process profile, number for number, and rank 0 wrote it
    assert rank0["profile"] == one["profile"]
    assert rank0["profile"]["num_test_samples"] == dist_job.TEST
    for name in ("block_profile.json", "accuracy_estimate.json"):
        assert (root / "one-copy" / name).read_text() == (root / "one" / name).read_text()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["killed", "hung"])
def test_a_failing_rank_stops_the_other_then_the_run_resumes(runs: Path, tmp_path: Path, how: str) -> None:
    """Rank 1 dies (SIGKILL) or stops answering (SIGSTOP) in the 3rd batch of epoch 2: rank 0
    stops with an error, at once or after the process-group timeout. After the kill, a
    restart resumes from the last checkpoint on both ranks and ends with the uninterrupted
    run's weights (the same state is left after a hang: resuming it once is enough)."""
    keys = 3 * 2  # descendants: loss calls per batch
    epoch = 4 * keys + keys  # 4 batches of 8 per rank, one held-out batch
    call = epoch + 2 * keys + 3
    config: Dict[str, Any] = {"compressed": str(runs / "compressed"), "target": str(tmp_path / "t"),
                              "out": str(tmp_path / "out"), "checkpoint_steps": 1, "timeout_s": TIMEOUT_S[how],
                              "die": [1, call, "SIGKILL" if how == "killed" else "SIGSTOP"]}
    procs = launch(config)
    try:
        stopped = _wait_for_rank1(procs[1], how)
        procs[0].wait(timeout=TIMEOUT_S[how] + 60)
        waited = time.monotonic() - stopped
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        errors = finish(procs)
    assert procs[0].returncode == 1, errors[0][-3000:]
    assert "LegoDNNError: rank 0 of 2" in errors[0] and "another rank stopped" in errors[0], errors[0][-3000:]
    if how == "hung":
        # not before the timeout (rank 0 may have begun waiting just before rank 1 stopped), and
        # not a hang: the upper bound is generous, it is no speed claim
        assert "Timed out" in errors[0] and TIMEOUT_S[how] - 1 < waited < TIMEOUT_S[how] + 60, waited
    else:
        assert waited < TIMEOUT_S[how], waited  # a closed connection is noticed, not waited out
    state = json.loads((tmp_path / "t" / "training" / "state.json").read_text())
    assert (state["epochs_done"], state["position"]["step"], state["world_size"]) == (1, 2, 2)
    assert not (tmp_path / "t" / "manifest.json").exists()
    if how == "hung":
        return

    del config["die"]
    procs = launch(config)
    errors = finish(procs)
    assert [p.returncode for p in procs] == [0, 0], errors[0][-3000:] + errors[1][-3000:]
    for err in errors:  # every rank resumed from the same checkpoint
        assert "resuming block training after epoch 1 and 2 steps" in err, err[-3000:]
    rank0, rank1 = ranks_results(tmp_path / "out")
    assert rank0["weights"] == rank1["weights"]
    assert max_difference(runs / "two", tmp_path / "t") == 0.0  # the uninterrupted two-process run's weights


def _wait_for_rank1(proc: subprocess.Popen, how: str) -> float:
    """The moment rank 1 died or stopped itself."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if how == "killed" and proc.poll() is not None:
            assert proc.returncode == -signal.SIGKILL, proc.communicate()[1][-3000:]
            return time.monotonic()
        if how == "hung" and _stopped(proc.pid):
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError("rank 1 did not reach its failure")


def _stopped(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except (OSError, IndexError):
        return False


# -- sharding and combining, without processes -------------------------------------------------------


class Peer(Ranks):
    """Rank 0 of 2 whose gathers return another rank's accumulators beside its own."""

    peer: Dict[Any, Any] = {}

    def all_gather(self, obj: Any, what: str) -> List[Any]:
        other = {k: (_state(a) if isinstance(next(iter(obj.values())), dict) else a) for k, a in self.peer.items()}
        return [obj, other]


def combined(make: Any, batches: List[Any]) -> Any:
    """``batches`` split between two ranks as a ShardSampler would, combined."""
    mine, theirs = make(), make()
    for i, (out, batch) in enumerate(batches):
        (mine if i % 2 == 0 else theirs).update(out, batch)
    ranks = Peer(0, 2)
    object.__setattr__(ranks, "peer", {"m": theirs})
    return combine_accumulators(ranks, {"m": mine}, make)["m"]


def alone(make: Any, batches: List[Any]) -> Any:
    acc = make()
    for out, batch in batches:
        acc.update(out, batch)
    return acc


def test_accumulators_combine_to_one_process_metric() -> None:
    from cv_tasks.anomaly_detection.metrics import AUROCAccumulator
    from cv_tasks.semantic_segmentation.metrics import MeanIoU

    g = torch.Generator().manual_seed(0)
    classify = [(torch.randn(5, 4, generator=g), (None, torch.randint(0, 4, (5,), generator=g))) for _ in range(3)]
    segment = [(torch.randn(2, 3, 4, 4, generator=g), (None, torch.randint(0, 3, (2, 4, 4), generator=g)))
               for _ in range(3)]
    anomaly = [(torch.randn(6, generator=g), (None, torch.arange(6) % 2)) for _ in range(3)]
    for make, batches in ((TopKAccuracy, classify), (lambda: TopKAccuracy(2), classify), (MeanIoU, segment),
                          (MeanIoU, segment[:1]), (AUROCAccumulator, anomaly)):
        # segment[:1]: rank 1 saw no batch, its confusion matrix was never created
        assert combined(make, batches).compute() == pytest.approx(alone(make, batches).compute(), abs=1e-12)


def test_accumulators_that_cannot_be_combined_say_so() -> None:
    class Mean:
        def __init__(self) -> None:
            self.scale = 1.0

        def update(self, out: Any, batch: Any) -> None:
            self.scale = float(out)  # not a count: differs between the ranks

        def compute(self) -> float:
            return self.scale

    with pytest.raises(LegoDNNError, match="Mean.scale differs .* merge"):
        combined(Mean, [(1.0, None), (2.0, None)])

    class Merging(Mean):
        def merge(self, other: "Merging") -> None:
            self.scale = max(self.scale, other.scale)

    assert combined(Merging, [(1.0, None), (2.0, None)]).compute() == 2.0


def test_loaders_are_sharded_without_repeating_test_samples() -> None:
    from torch.utils.data import DataLoader, TensorDataset
    from torch.utils.data.distributed import DistributedSampler

    data = TensorDataset(torch.arange(10).float())
    loader = DataLoader(data, batch_size=2, shuffle=True)
    seen = [torch.cat([b[0] for b in shard_loader(loader, Ranks(r, 3), train=False)]).tolist() for r in range(3)]
    assert sorted(x for s in seen for x in s) == list(range(10))  # each once, though 10 is not a multiple of 3
    train = [shard_loader(loader, Ranks(r, 3), train=True, seed=4) for r in range(3)]
    assert all(isinstance(t.sampler, DistributedSampler) and len(t) == 2 for t in train)  # 4 samples each, padded
    assert shard_loader(train[0], Ranks(0, 3), train=True) is train[0]  # sharded already: kept
    assert isinstance(shard_loader(loader, Ranks(0, 3), train=False).sampler, ShardSampler)
    batches = list(range(7))
    assert [list(RankStrided(batches, r, 3, whole_rounds=True)) for r in range(3)] == [[0, 3], [1, 4], [2, 5]]
    assert [list(RankStrided(batches, r, 3, whole_rounds=False)) for r in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]
    assert [len(RankStrided(batches, r, 3, whole_rounds=False)) for r in range(3)] == [3, 2, 2]
    assert shard_loader(loader, Ranks(), train=True) is loader  # one process: untouched


def test_a_mid_epoch_checkpoint_resumes_only_with_its_number_of_processes(tmp_path: Path) -> None:
    from legodnn.offline.checkpoints import CheckpointFolder

    state = {"epochs_done": 1, "position": {"step": 2}, "world_size": 2, "files": {}}
    with pytest.raises(LegoDNNError, match="by 2 process.*torchrun --nproc_per_node 2"):
        CheckpointFolder(tmp_path).load(state)


# -- descendant-parallel block retraining and SyncBatchNorm ------------------------------------------

PARALLEL_JOB = Path(__file__).parent / "dist_parallel_job.py"
# the largest weight difference allowed between two data-parallel processes with sync_batchnorm and one
# process, BatchNorm in the descendants (rounding only: the statistics are summed in another order)
SYNC_BN_TOLERANCE = 1e-4


def run_job(config: Dict[str, Any], world: int = 2, timeout: float = 300) -> List[str]:
    """``world`` ranks of dist_parallel_job.py to the end; their stderr (each must exit 0)."""
    procs = launch({"timeout_s": 120.0, **config}, world, PARALLEL_JOB)
    try:
        errors = finish(procs, timeout)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0] * world, "\n".join(e[-3000:] for e in errors)
    return errors


def in_process(config: Dict[str, Any]) -> Dict[str, Any]:
    """The one-process reference, through the same lines as every rank."""
    import dist_parallel_job

    threads = torch.get_num_threads()
    try:  # no process group in this process: legodnn's own timeout is for the ranks' groups
        return dist_parallel_job.run({k: v for k, v in config.items() if k != "timeout_s"})
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Compressed stores of the functional model (a module called twice, no BatchNorm) and of
    the sequential one (BatchNorm in every block)."""
    root = tmp_path_factory.mktemp("parallel")
    mm = CommonModelManager()
    for name in ("functional", "sequential"):
        AutoBlockManager(dist_job.SPARSITIES, build(name), mm, dist_job.SIZE, verbose=False).extract_all_blocks(
            str(root / f"compressed-{name}"))
    return root


@pytest.fixture(scope="module")
def descendant_runs(stores: Path) -> Path:
    """One process, and two descendant-parallel ones, over a shuffling loader; rank 1 seeds its
    global generator differently from rank 0 (and from the one process), so it reads the batches
    one process reads only if rank 0's generators reach it."""
    root = stores
    config = {"compressed": str(root / "compressed-functional"), "shuffle": True, "rank_seed_step": 1,
              "parallel": "descendants"}
    in_process({**config, "target": str(root / "desc-one"), "out": str(root / "desc-one-out")})
    run_job({**config, "target": str(root / "desc-two"), "out": str(root / "desc-two-out")})
    return root


@pytest.mark.slow
def test_descendant_parallel_trains_as_one_process(descendant_runs: Path) -> None:
    root = descendant_runs
    one = json.loads((root / "desc-one-out" / "rank0.json").read_text())
    rank0, rank1 = ranks_results(root / "desc-two-out")
    # the descendants are shared out: each rank trains some, together all, none twice
    owned = [{tuple(k) for k in r["owned"]} for r in (rank0, rank1)]
    assert owned[0] and owned[1] and not owned[0] & owned[1]
    assert owned[0] | owned[1] == {tuple(k) for k in one["owned"]} and len(one["owned"]) == 6
    # every rank ends with the same weights and history
    assert rank0["weights"] == rank1["weights"] and rank0["history"] == rank1["history"]
    # the block stage is one process's bit for bit (each descendant trained by one rank on the same
    # batches, no collective in its arithmetic): the losses are equal, not close
    assert rank0["history"] == one["history"]
    # the composition stage after it is data-parallel over each batch split in two: rounding only
    assert max_difference(root / "desc-one", root / "desc-two") < WEIGHT_TOLERANCE
    for got, want in zip(rank0["composition"], one["composition"]):
        assert got == pytest.approx(want, rel=1e-4)
    ta, tb = (json.loads((root / p / "manifest.json").read_text())["trained"] for p in ("desc-one", "desc-two"))
    assert ta["epochs"] == tb["epochs"] and ta["best_val_loss"] == tb["best_val_loss"]


@pytest.mark.slow
def test_descendant_parallel_resumes_after_a_kill_with_two_ranks_or_one(descendant_runs: Path,
                                                                         tmp_path: Path) -> None:
    """Rank 1 is killed while it reads the 3rd batch of epoch 2 (checkpoints after every step):
    rank 0 stops with an error and the last checkpoint is rank 0's gathered one, mid-epoch. Both
    ranks restarted end with the uninterrupted two-rank run's weights, bit for bit; one process
    restarted from the same checkpoint (its position counts whole batches) ends with one
    process's weights, bit for bit."""
    root = descendant_runs
    config: Dict[str, Any] = {"compressed": str(root / "compressed-functional"), "shuffle": True,
                              "rank_seed_step": 1, "parallel": "descendants", "target": str(tmp_path / "t"),
                              "out": str(tmp_path / "out"), "checkpoint_steps": 1, "timeout_s": 120.0,
                              "die": [1, 1 + 4 + 3]}  # the first-batch check, epoch 1, the 3rd of epoch 2
    procs = launch(config, 2, PARALLEL_JOB)
    try:
        procs[0].wait(timeout=300)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        errors = finish(procs)
    assert procs[1].returncode == -signal.SIGKILL, errors[1][-3000:]
    assert procs[0].returncode == 1, errors[0][-3000:]
    assert "LegoDNNError: rank 0 of 2" in errors[0] and "another rank stopped" in errors[0], errors[0][-3000:]
    state = json.loads((tmp_path / "t" / "training" / "state.json").read_text())
    assert (state["epochs_done"], state["position"]["step"], state["world_size"]) == (1, 2, 2)
    assert state["replicated_data"] is True
    assert not (tmp_path / "t" / "manifest.json").exists()
    shutil.copytree(tmp_path / "t", tmp_path / "t1")

    del config["die"]
    for err in run_job(config):
        assert "resuming block training after epoch 1 and 2 steps" in err, err[-3000:]
    rank0, rank1 = ranks_results(tmp_path / "out")
    assert rank0["weights"] == rank1["weights"]
    assert max_difference(root / "desc-two", tmp_path / "t") == 0.0

    alone = in_process({**config, "target": str(tmp_path / "t1"), "out": str(tmp_path / "out1")})
    assert alone["world"] == 1
    assert max_difference(root / "desc-one", tmp_path / "t1") == 0.0


@pytest.fixture(scope="module")
def batchnorm_runs(stores: Path) -> Path:
    """The sequential model (BatchNorm in every descendant, following the batches in both stages):
    one process at batches of 16, and two data-parallel ones at 8 each, without and with
    sync_batchnorm, over the same samples per step."""
    root = stores
    config = {"compressed": str(root / "compressed-sequential"), "model": "sequential"}
    in_process({**config, "target": str(root / "bn-one"), "out": str(root / "bn-one-out")})
    for name, sync in (("bn-two", False), ("bn-two-sync", True)):
        run_job({**config, "sync_batchnorm": sync, "target": str(root / name), "out": str(root / f"{name}-out")})
    return root


def cancelled_by_batchnorm(names: List[str]) -> set:
    """The biases of layers that a BatchNorm follows (``N.bias`` beside ``N+1.running_mean`` in
    one descendant's file), and those BatchNorms' running means.

    BatchNorm subtracts the batch mean, so such a bias has no effect and its gradient is zero in
    exact arithmetic: what is left is rounding noise, which Adam's normalised steps turn into
    steps of about its learning rate (1e-3) whatever the noise's size. The running mean after it
    tracks the drifting bias. These tensors differ between any two runs that round differently
    (measured: 8.7e-4 with sync_batchnorm, 3.8e-4 without), so they say nothing about the
    statistics."""
    out = set()
    for name in names:
        file, _, tensor = name.rpartition("/")
        layer, _, kind = tensor.rpartition(".")
        if kind == "bias" and layer.isdigit() and f"{file}/{int(layer) + 1}.running_mean" in names:
            out |= {name, f"{file}/{int(layer) + 1}.running_mean"}
    return out


@pytest.mark.slow
def test_sync_batchnorm_makes_two_processes_match_one(batchnorm_runs: Path) -> None:
    root = batchnorm_runs
    one = json.loads((root / "bn-one-out" / "rank0.json").read_text())
    reference = weights(root / "bn-one")
    skip = cancelled_by_batchnorm(list(reference))
    assert skip  # the sequential model has such layers: the rest must still be compared

    def difference(name: str) -> float:
        got = weights(root / name)
        assert got.keys() == reference.keys()
        return max(float((got[k] - reference[k]).abs().max()) for k in reference
                   if k not in skip and reference[k].is_floating_point())

    plain, synced = difference("bn-two"), difference("bn-two-sync")
    # per-shard statistics move the weights and the running statistics measurably (measured 5.8e-3);
    # global ones leave rounding (measured 2.3e-6)
    assert plain > 1e-3, plain
    assert synced < SYNC_BN_TOLERANCE and synced < plain / 100, (synced, plain)
    rank0, rank1 = ranks_results(root / "bn-two-sync-out")
    assert rank0["weights"] == rank1["weights"]
    plain0 = ranks_results(root / "bn-two-out")[0]

    def loss_gap(run: Dict[str, Any]) -> float:
        return max(abs(run["history"][n][k][e] / h[k][e] - 1) for n, h in one["history"].items()
                   for k in ("train", "val") for e in range(len(h[k])))

    # the losses too: the cancelled biases move them a little (measured 4.1e-4 with sync, 1.9e-3 without)
    assert loss_gap(rank0) < 1e-3 and loss_gap(rank0) < loss_gap(plain0), (loss_gap(rank0), loss_gap(plain0))
    for got, want in zip(rank0["composition"], one["composition"]):
        assert got == pytest.approx(want, rel=1e-4)


# -- the pieces, in one process -------------------------------------------------------------------------


def test_descendants_are_shared_out_by_cost() -> None:
    from legodnn.offline.distributed import balanced_split

    assert balanced_split([5, 1, 4, 2, 3], 2) == [[0, 1, 3], [2, 4]]  # 5+2+1 | 4+3
    assert balanced_split([1, 1, 1], 1) == [[0, 1, 2]]
    assert balanced_split([3, 1], 3) == [[0], [1], []]  # more ranks than descendants: one idle
    costs = [float(c) for c in torch.randint(1, 1000, (40,), generator=torch.Generator().manual_seed(0))]
    loads = [sum(costs[i] for i in share) for share in balanced_split(costs, 4)]
    assert max(loads) - min(loads) <= max(costs)  # greedy largest-first: within one descendant


def test_batches_are_split_among_the_ranks() -> None:
    from collections import namedtuple

    from legodnn.offline.distributed import SplitBatches, split_batch

    images, labels = torch.arange(10.0).view(5, 2), torch.arange(5)
    assert [split_batch((images, labels), *span)[1].tolist() for span in ((0, 2), (2, 5))] == [[0, 1], [2, 3, 4]]
    targets = [{"boxes": torch.zeros(i, 4)} for i in range(5)]  # detection style: one dict per image
    got = split_batch([images, targets, 7], 1, 3)
    assert got[0].shape == (2, 2) and [len(t["boxes"]) for t in got[1]] == [1, 2] and got[2] == 7
    pair = namedtuple("pair", "x y")
    assert split_batch(pair(images, labels), 3, 5).y.tolist() == [3, 4]
    got = split_batch({"x": images, "scale": torch.tensor(2.0)}, 0, 1)
    assert got["x"].shape == (1, 2) and got["scale"].item() == 2.0
    batches = [(torch.zeros(n, 1), torch.arange(n)) for n in (4, 3, 1)]
    train = [[b[1].tolist() for b in SplitBatches(batches, r, 2, train=True)] for r in range(2)]
    assert train == [[[0, 1], [0]], [[2, 3], [1, 2]]]  # a batch of 1 for 2 ranks: skipped by both
    held_out = [[b[1].tolist() for b in SplitBatches(batches, r, 2, train=False)] for r in range(2)]
    assert held_out == [[[0, 1], [0]], [[2, 3], [1, 2], [0]]]  # every sample once
    assert len(SplitBatches(batches, 0, 2, train=True)) == 3


def test_parallel_options_are_checked(tmp_path: Path) -> None:
    """Refused before any store is opened (the one named here does not exist)."""
    from torch.utils.data import DataLoader

    from legodnn.offline import BlockRetrainer

    model, mm = build("functional"), CommonModelManager()
    bm = AutoBlockManager(dist_job.SPARSITIES, model, mm, dist_job.SIZE, verbose=False)
    loader = DataLoader(dist_job.dataset(16, 0), batch_size=8)
    args = (model, bm, mm, str(tmp_path / "no-store"), str(tmp_path / "t"), 1, loader, loader)
    with pytest.raises(LegoDNNError, match=r"parallel must be one of 'data', 'descendants', got 'model'"):
        BlockRetrainer(*args, parallel="model")
    with pytest.raises(LegoDNNError, match=r"sync_batchnorm must be True or False, got .*'yes'"):
        BlockRetrainer(*args, sync_batchnorm="yes")
    with pytest.raises(LegoDNNError, match=r"parallel='descendants' needs data_parallel=True"):
        BlockRetrainer(*args, parallel="descendants", data_parallel=False)
    from legodnn.offline.composition_retrainer import CompositionStage

    with pytest.raises(LegoDNNError, match=r"sync_batchnorm must be True or False"):
        CompositionStage(bm, mm, 1, loader, loader, tmp_path / "c", sync_batchnorm=1)


def test_a_whole_batch_checkpoint_resumes_with_other_numbers_of_ranks(tmp_path: Path) -> None:
    from legodnn.offline.checkpoints import CheckpointFolder

    replicated = {"epochs_done": 1, "position": {"step": 2}, "world_size": 2, "replicated_data": True,
                  "files": {"last": "x", "best": "x", "optim": "x"}}
    data_parallel = {**replicated, "replicated_data": False}
    single = {**replicated, "world_size": 1, "replicated_data": False}
    # the position counts whole batches: one process, or three ranks that each read every batch, go on
    for state, ranks, replicated_reads in ((replicated, Ranks(), False), (replicated, Ranks(0, 3), True),
                                           (single, Ranks(0, 2), True)):
        with pytest.raises((FileNotFoundError, LegoDNNError)) as info:  # past the check, to the (missing) files
            CheckpointFolder(tmp_path, ranks, replicated_data=replicated_reads).load(state)
        assert "middle of an epoch" not in str(info.value)
    # a shard's position means nothing to another count, nor whole batches to data-parallel ranks
    for state, ranks, replicated_reads in ((data_parallel, Ranks(), False), (replicated, Ranks(0, 3), False)):
        with pytest.raises(LegoDNNError, match="by 2 process"):
            CheckpointFolder(tmp_path, ranks, replicated_data=replicated_reads).load(state)


def test_global_batchnorm_is_batchnorm_over_the_summed_statistics() -> None:
    """GlobalBatchNorm's arithmetic on a one-rank gloo group (its all-reduces are then the
    identity): the output, the gradients and the running statistics are BatchNorm's."""
    import torch.distributed as dist

    from legodnn.offline.sync_batchnorm import GlobalBatchNorm, convert_batchnorm

    assert not dist.is_initialized()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        g = torch.Generator().manual_seed(0)
        for source, shape in ((torch.nn.BatchNorm2d(3), (4, 3, 5, 5)), (torch.nn.BatchNorm1d(3), (6, 3)),
                              (torch.nn.BatchNorm2d(3, momentum=None), (4, 3, 2, 2))):
            with torch.no_grad():
                source.weight.uniform_(0.5, 1.5, generator=g)
                source.bias.normal_(generator=g)
            reference = torch.nn.Sequential(copy.deepcopy(source)).train()
            net = torch.nn.Sequential(source).train()
            assert convert_batchnorm([net], Ranks(0, 2)) == 1  # "2 ranks": the collectives run
            assert isinstance(net[0], GlobalBatchNorm) and net[0].weight is source.weight
            assert net.state_dict().keys() == reference.state_dict().keys()
            x = torch.randn(*shape, generator=g) * 3 + 1
            for _ in range(2):
                xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
                got, want = net(xa), reference(xb)
                w = torch.randn(got.shape, generator=g)
                (got * w).sum().backward()
                (want * w).sum().backward()
                assert torch.allclose(got, want, atol=1e-5)
                assert torch.allclose(xa.grad, xb.grad, atol=1e-4)
            assert torch.allclose(net[0].weight.grad, reference[0].weight.grad, atol=1e-4)
            for name, value in reference.state_dict().items():
                assert torch.allclose(net.state_dict()[name].float(), value.float(), atol=1e-5), name
            net.eval(), reference.eval()
            reference[0].load_state_dict(net[0].state_dict())
            assert torch.equal(net(x), reference(x))  # evaluation: BatchNorm itself
    finally:
        dist.destroy_process_group()
    assert convert_batchnorm([torch.nn.Sequential(torch.nn.BatchNorm2d(2))], Ranks()) == 0  # one process: nothing


def test_parallel_flags_of_the_retrain_command() -> None:
    from legodnn.cli.args import UsageError
    from legodnn.cli.main import build_parser
    from legodnn.cli.offline import parallel_options

    base = ["retrain", "--model", "zoo:FunctionalNet", "--blocks", "b", "--out", "o", "--data", "digits"]
    args = build_parser().parse_args(base)
    assert parallel_options(args) == {"parallel": "data", "sync_batchnorm": False}
    args = build_parser().parse_args([*base, "--parallel", "descendants", "--sync-batchnorm"])
    assert parallel_options(args) == {"parallel": "descendants", "sync_batchnorm": True}
    with pytest.raises(UsageError, match="invalid choice: 'model'"):
        build_parser().parse_args([*base, "--parallel", "model"])
