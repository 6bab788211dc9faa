"""Mid-epoch checkpoints for both retraining stages, and epochs that resume where they stopped.

Saving only at the end of an epoch loses up to a whole epoch to a kill; on a real data
set that is most of a run. The stages therefore also save every ``checkpoint_steps``
steps or ``checkpoint_seconds`` seconds (see :class:`CheckpointClock`), and a resumed
run must then end with exactly the weights of an uninterrupted one. Two things make it so:

* **The files.** Each checkpoint's files get new names (``c<n>.last.safetensors``,
  ``c<n>.optim.pt``, ...), each written atomically; ``state.json``, which names them, is
  written last and replaces the previous one in one rename. Killed at any instant, the
  folder holds a ``state.json`` naming complete files of one checkpoint; the files of
  older checkpoints, or of one killed half-way, are removed after the next save.
* **The data order and the random numbers.** A shuffling ``DataLoader`` draws its order
  from torch's global generator when its iterator starts (or from its own
  ``generator=``), and augmentations, dropout or a loss may draw from the global
  generators at any step. A checkpoint records the generators at the start of its epoch
  and at the checkpoint; a resumed epoch (:func:`resume_epoch`) restores the first,
  starts the loader, draws the batches already trained on (loaded, not trained: loader
  workers' own generators move on as they did) and restores the second.

Under ``torch.distributed`` (:mod:`~legodnn.offline.distributed`) every rank calls the
same methods: rank 0 alone reads ``state.json`` and sends it to the others, every rank
loads the files it names (the folder must be on a file system every rank sees), and a
save gathers every rank's generators to rank 0, which writes while the others wait at
a barrier. A checkpoint taken in the middle of an epoch resumes only with as many
ranks as took it (the position is counted in each rank's batches).

Not covered: a ``DataLoader`` with ``persistent_workers=True`` keeps its workers, and
their generators, from epoch to epoch, which a new process cannot rebuild; a resumed
run then sees another order or other augmentations from the next epoch on.
"""

from __future__ import annotations

import json
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

import torch

from ..blockmanager.atomic import (
    remove_stale_temps,
    save_torch_atomic,
    write_tensors_atomic,
    write_text_atomic,
)
from ..errors import LegoDNNError
from ..validation import check_float, check_int
from .distributed import Ranks

__all__ = ["Checkpoint", "CheckpointClock", "CheckpointFolder", "resume_epoch", "rng_state", "set_rng_state",
           "share_rng_state"]

STATE_FILE = "state.json"
# checkpoint files: c<n>.* (and epoch<n>.*, the composition stage's names before mid-epoch checkpoints)
_CHECKPOINT_FILE = re.compile(r"^(c|epoch)\d+\.(last|best|optim|rng)\.(safetensors|pt)$")


# -- the global random generators ---------------------------------------------------------


def _loader_generators(loader: Any) -> List[torch.Generator]:
    """The generators a ``DataLoader`` draws its order from besides the global one: its
    ``generator=`` and its sampler's own (a loader split by batches across ranks: the
    user's loader's)."""
    loader = getattr(loader, "wrapped_loader", loader)
    found: List[torch.Generator] = []
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(getattr(loader, "batch_sampler", None), "sampler", None)
    for owner in (loader, sampler, batch_sampler):
        g = getattr(owner, "generator", None)
        if isinstance(g, torch.Generator) and all(g is not f for f in found):
            found.append(g)
    return found


def rng_state(loader: Any = None) -> Dict[str, Any]:
    """The state of every generator a training step may draw from.

    torch's CPU generator, Python's ``random``, NumPy's legacy global generator, the
    CUDA generators once CUDA is in use (asking before would start CUDA for nothing),
    and ``loader``'s own. Plain tensors, numbers and tuples:
    ``torch.load(weights_only=True)`` reads them back.
    """
    state: Dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                             "loader": [g.get_state() for g in _loader_generators(loader)]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy comes with torch's usual installs
        return state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state["numpy"] = (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))
    return state


def set_rng_state(state: Mapping[str, Any], loader: Any = None) -> None:
    """Put the generators back to ``state`` (from :func:`rng_state` with the same ``loader``)."""
    torch.set_rng_state(state["torch"])
    for g, saved in zip(_loader_generators(loader), state.get("loader", ())):
        g.set_state(saved)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def share_rng_state(ranks: Ranks, loader: Any = None) -> None:
    """Give every rank rank 0's generators (CPU, Python, NumPy, ``loader``'s own; not CUDA's,
    whose devices differ between ranks).

    For a stage in which every rank reads the same batches (descendant-parallel block
    training, and the composition stage after it): a shuffling loader draws its order,
    and augmentations their random numbers, from these generators, so with rank 0's on
    every rank each reads rank 0's batches, the ones one process would read. Nothing
    happens with one process.
    """
    if not ranks.distributed:
        return
    mine = {k: v for k, v in rng_state(loader).items() if k != "cuda"} if ranks.is_main else None
    set_rng_state(ranks.broadcast(mine, "sharing rank 0's random generators"), loader)


# -- when to save -------------------------------------------------------------------------


def check_checkpoint_options(seconds: Any, steps: Any) -> Tuple[Optional[float], Optional[int]]:
    """``checkpoint_seconds`` and ``checkpoint_steps`` checked at the public boundary."""
    seconds = check_float("checkpoint_seconds", seconds, minimum=0.0, min_inclusive=False, allow_none=True,
                          hint="pass the seconds of training between mid-epoch checkpoints, e.g. 60.0, or None")
    steps = check_int("checkpoint_steps", steps, minimum=1, allow_none=True,
                      hint="pass the training steps between mid-epoch checkpoints, e.g. 500, or None")
    return seconds, steps


class CheckpointClock:
    """Says when a mid-epoch checkpoint is due: ``steps`` steps or ``seconds`` seconds after
    the last one, whichever comes first (``None`` turns that measure off).

    Counting from the end of the previous save keeps the share of time spent saving
    bounded whatever a save costs.
    """

    def __init__(self, seconds: Optional[float], steps: Optional[int]) -> None:
        self.seconds, self.steps = seconds, steps
        self.restart()

    def restart(self) -> None:
        self._since, self._count = time.monotonic(), 0

    def step_done(self) -> bool:
        """Count one step; True when a checkpoint is due after it."""
        self._count += 1
        return ((self.steps is not None and self._count >= self.steps)
                or (self.seconds is not None and time.monotonic() - self._since >= self.seconds))


# -- resuming an epoch ----------------------------------------------------------------------

_END = object()


def resume_epoch(loader: Iterable[Any], done: int = 0,
                 rng: Optional[Mapping[str, Any]] = None) -> Tuple[Dict[str, Any], Iterator[Any]]:
    """Start an epoch: the generators' state at its start and an iterator over its batches.

    A fresh epoch (``done == 0``) records the generators now and starts ``loader``. An
    epoch resumed after ``done`` batches restores the generators to the start of the
    epoch (``rng["epoch_start"]``), starts the loader, so that a shuffling loader draws
    the same order, draws the ``done`` batches already trained on, and restores the
    generators to the checkpoint (``rng["now"]``).
    """
    resumed = bool(done) and rng is not None and rng.get("epoch_start") is not None
    if done and not resumed:
        raise LegoDNNError("a mid-epoch checkpoint without the random generators' state cannot be resumed; "
                           "delete the training state folder to start over")
    if resumed:
        set_rng_state(rng["epoch_start"], loader)  # type: ignore[index]
    epoch_start = rng_state(loader)
    batches = iter(loader)
    for i in range(done):
        if next(batches, _END) is _END:
            raise LegoDNNError(
                f"train_loader yielded {i} batches, fewer than the {done} the checkpoint had trained on in this "
                "epoch; resume with the same training data, or delete the training state folder to start over")
    if resumed:
        set_rng_state(rng["now"], loader)  # type: ignore[index]
    return epoch_start, batches


def _mark_replicated(state: Dict[str, Any], replicated: bool) -> None:
    """Say in ``state`` whether every rank read every batch (absent when not: a data-parallel
    or one-process checkpoint is written as it always was)."""
    if replicated:
        state["replicated_data"] = True
    else:
        state.pop("replicated_data", None)


# -- the files -------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """One complete checkpoint as read back."""

    state: Dict[str, Any]  # what state.json holds
    last: Dict[str, torch.Tensor]  # the live weights
    best: Dict[str, torch.Tensor]  # the best weights so far
    optim: Any  # optimizer state
    rng: Optional[Dict[str, Any]]  # {"now": ..., "epoch_start": ...}; None in older state (no mid-epoch ones)


class CheckpointFolder:
    """``state.json`` and the files of the checkpoint it names, in one folder.

    ``state["files"]`` names the checkpoint's files (kind -> file name),
    ``state["checkpoint"]`` numbers it and ``state["world_size"]`` says how many ranks
    took it; all are kept up to date by :meth:`save`. ``ranks``: the ranks that train
    together (every one of them calls every method; rank 0 alone writes).
    ``replicated_data``: every rank reads every batch (descendant-parallel block
    training), so a mid-epoch position counts whole batches, as one process's does; the
    state then says so (``"replicated_data": true``) and such a checkpoint, or one of a
    single process, resumes with any number of ranks that read every batch.
    """

    def __init__(self, folder: Path, ranks: Ranks = Ranks(), replicated_data: bool = False) -> None:
        self.folder = Path(folder)
        self.ranks = ranks
        self.replicated_data = replicated_data

    def read_state(self) -> Optional[Dict[str, Any]]:
        """``state.json`` of the last complete checkpoint, or ``None``; what dead writers
        left half-written (temporary files) is removed first. Read by rank 0 and sent to
        the others, so all resume from the same checkpoint."""
        state = None
        if self.ranks.is_main:
            remove_stale_temps(self.folder)
            path = self.folder / STATE_FILE
            if path.is_file():
                state = json.loads(path.read_text(encoding="utf-8"))
        return self.ranks.broadcast(state, "reading the checkpoint state")

    def discard_state(self) -> None:
        """Forget the checkpoint (its files go with the next save)."""
        if self.ranks.is_main:
            (self.folder / STATE_FILE).unlink(missing_ok=True)

    def load(self, state: Dict[str, Any]) -> Checkpoint:
        """The files ``state`` names; ``rng`` holds this rank's generators."""
        from safetensors.torch import load_file

        took = int(state.get("world_size", 1))
        # positions in whole batches (one process, or ranks that each read every batch) mean the same to any
        # number of ranks that read every batch; a data-parallel rank's position counts its shard's batches
        whole = took == 1 or bool(state.get("replicated_data"))
        same_meaning = whole and (self.replicated_data or not self.ranks.distributed)
        if state.get("position") and took != self.ranks.world_size and not same_meaning:
            raise LegoDNNError(
                f"{self.folder} holds a checkpoint taken in the middle of an epoch by {took} process(es); resume it "
                f"with {took} (torchrun --nproc_per_node {took}), or delete the folder to start over")
        files = state["files"]
        path = {kind: str(self.folder / name) for kind, name in files.items()}
        try:
            rng = torch.load(path["rng"], weights_only=True) if "rng" in path else None
            checkpoint = Checkpoint(state, load_file(path["last"]), load_file(path["best"]),
                                    torch.load(path["optim"], weights_only=True), rng)
        except FileNotFoundError as e:
            if not self.ranks.distributed:
                raise
            raise LegoDNNError(
                f"rank {self.ranks.rank} cannot read {e.filename}, which rank 0's {STATE_FILE} names: the training "
                "state must be on a file system every rank sees") from e
        per_rank = (rng or {}).get("ranks")
        if per_rank is not None:  # taken by several ranks: this rank's own generators, rank 0's with another count
            checkpoint.rng = per_rank[self.ranks.rank] if len(per_rank) == self.ranks.world_size else per_rank[0]
        return checkpoint

    def save(self, state: Dict[str, Any], last: Mapping[str, torch.Tensor], best: Optional[Mapping[str, torch.Tensor]],
             optim: Any, epoch_start_rng: Optional[Dict[str, Any]], loader: Any = None) -> None:
        """Write a checkpoint under new names, then ``state.json`` naming it.

        ``best=None`` keeps the best-weights file of the previous checkpoint (the best
        weights change only at the end of an epoch; a mid-epoch checkpoint does not
        rewrite them). ``epoch_start_rng`` is the generators' state at the start of the
        current epoch (``None`` at the end of one); the training ``loader``'s own
        generators are recorded too. ``state`` gets the new file names.

        With several ranks, each rank's generators are gathered (the rng file holds rank
        0's as before and every rank's under ``"ranks"``); rank 0 writes and the others
        wait for it at a barrier, with ``state`` updated alike on every rank.
        """
        rng: Dict[str, Any] = {"now": rng_state(loader), "epoch_start": epoch_start_rng}
        every = self.ranks.gather(rng, "gathering the random generators for a checkpoint")
        number = int(state.get("checkpoint", 0)) + 1
        files = dict(state.get("files") or {})
        if best is None and "best" not in files:
            raise ValueError("the first checkpoint must write the best weights")
        files.update(last=f"c{number}.last.safetensors", optim=f"c{number}.optim.pt", rng=f"c{number}.rng.pt")
        if best is not None:
            files["best"] = f"c{number}.best.safetensors"
        if self.ranks.is_main:
            if self.ranks.distributed:
                rng["ranks"] = every
            self.folder.mkdir(parents=True, exist_ok=True)
            write_tensors_atomic(self.folder / files["last"], last)
            if best is not None:
                write_tensors_atomic(self.folder / files["best"], best)
            save_torch_atomic(self.folder / files["optim"], optim)
            save_torch_atomic(self.folder / files["rng"], rng)
            state["checkpoint"], state["files"], state["world_size"] = number, files, self.ranks.world_size
            _mark_replicated(state, self.replicated_data)
            write_text_atomic(self.folder / STATE_FILE, json.dumps(state, indent=1))  # the checkpoint is complete
            keep = set(files.values())
            for entry in self.folder.iterdir():
                if _CHECKPOINT_FILE.match(entry.name) and entry.name not in keep:
                    entry.unlink(missing_ok=True)
        else:
            state["checkpoint"], state["files"], state["world_size"] = number, files, self.ranks.world_size
            _mark_replicated(state, self.replicated_data)
        self.ranks.barrier("waiting for rank 0 to write a checkpoint")
