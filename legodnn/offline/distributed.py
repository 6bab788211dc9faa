"""Data-parallel retraining and profiling under ``torch.distributed`` (``torchrun``).

A user who outgrows one process already has PyTorch's own engine: ``torchrun`` starts
N copies of a script and ``torch.distributed`` connects them. The retrainers and the
profiler use it when a process group of more than one rank exists (or ``torchrun``'s
environment says one should: legodnn then creates it, see :func:`init_distributed`):

* **Data** is sharded (:func:`shard_loader`): each rank reads its share of every loader.
* **Training** is data-parallel as in DDP: each rank runs the teacher and every
  descendant on its shard, and before each optimizer step the gradients are averaged
  over the ranks and the floating-point buffers (BatchNorm's running statistics) set to
  rank 0's (:meth:`Ranks.average_gradients`), so every rank keeps the same weights.
* **Losses and metrics** are reduced: held-out losses as sums and counts, a profile's
  metric accumulators by their counts (:func:`combine_accumulators`), so the result is
  the one a single process gets over the same data.
* **Files** are written by rank 0 alone while the others wait at a barrier; every rank
  reads the same checkpoint to resume.
* **Failures** stop the job: a rank that dies closes its connections, and a rank that
  hangs is given up on after the process group's timeout; every collective legodnn runs
  turns either into a :class:`~legodnn.errors.LegoDNNError` naming what was being done.

``BlockRetrainer(..., parallel="descendants")`` splits the block stage the other way
(:func:`balanced_split`): every rank reads every batch and trains its share of the
descendants, and the composition stage after it is data-parallel over every batch
split among the ranks (:class:`SplitBatches`), so the samples per step stay one
process's. With ``sync_batchnorm=True`` the descendants' BatchNorm normalises with the
statistics of every rank's samples together (:mod:`~legodnn.offline.sync_batchnorm`).

With one process (or ``data_parallel=False``) nothing here changes what the stages do.
"""

from __future__ import annotations

import copy
import datetime
import functools
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, Sampler, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

from ..errors import InvalidArgumentError, LegoDNNError

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "PARALLEL_MODES",
    "SplitBatches",
    "balanced_split",
    "check_parallel",
    "split_batch",
    "TIMEOUT_ENV",
    "RankStrided",
    "Ranks",
    "ShardSampler",
    "batch_len",
    "combine_accumulators",
    "current_ranks",
    "init_distributed",
    "shard_loader",
    "start_epoch",
]

#: how long a rank waits for the others in one collective before giving up, in seconds.
#: A rank that dies is noticed at once (its connections close); the timeout bounds the
#: wait for one that hangs. It must exceed the longest time one rank works alone while
#: the others wait: rank 0 writing a checkpoint or the final store (seconds to a minute
#: for ImageNet models), or a step on a straggling rank.
DEFAULT_TIMEOUT_S = 600.0
#: the environment variable that overrides :data:`DEFAULT_TIMEOUT_S` (seconds)
TIMEOUT_ENV = "LEGODNN_DIST_TIMEOUT"

#: how ``BlockRetrainer`` splits its block stage over the ranks: ``"data"`` (each rank a
#: shard of the data, every descendant; the default) or ``"descendants"`` (each rank all
#: the data, its share of the descendants)
PARALLEL_MODES = ("data", "descendants")

_BUCKET_ELEMENTS = 1 << 24  # gradients are all-reduced in buckets of at most 64 MiB of fp32


# -- the process group ------------------------------------------------------------------


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def init_distributed(timeout_s: Optional[float] = None, backend: Optional[str] = None,
                     device: str = "cpu") -> "Ranks":
    """Create the default process group from ``torchrun``'s environment, with a timeout.

    Does nothing when a group exists already (its timeout is then whoever made it's).
    ``timeout_s``: seconds a collective may wait for the other ranks (default
    ``$LEGODNN_DIST_TIMEOUT`` or :data:`DEFAULT_TIMEOUT_S`); ``backend``: ``"gloo"``
    for CPU devices and ``"nccl"`` for CUDA ones unless given. Reads ``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` as ``torchrun`` sets them.
    Returns this process's :class:`Ranks`.
    """
    dist = _dist()
    if not dist.is_initialized():
        if timeout_s is None:
            raw = os.environ.get(TIMEOUT_ENV)
            try:
                timeout_s = float(raw) if raw else DEFAULT_TIMEOUT_S
            except ValueError:
                raise LegoDNNError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise LegoDNNError(f"the process-group timeout must be a positive number of seconds, got {timeout_s!r}")
        missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise LegoDNNError(f"cannot start torch.distributed: {', '.join(missing)} not set; launch the script "
                               "with torchrun (torchrun --nproc_per_node 2 script.py)")
        backend = backend or ("nccl" if str(device).startswith("cuda") else "gloo")
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return Ranks(dist.get_rank(), dist.get_world_size())


def current_ranks(data_parallel: bool = True, device: str = "cpu") -> "Ranks":
    """The ranks a stage works with: the default process group when one of more than one
    rank exists (created by :func:`init_distributed` when ``torchrun`` started this
    process and nobody did yet), else a single process. ``data_parallel=False`` always
    works alone."""
    if not data_parallel:
        return Ranks()
    dist = _dist()
    if not dist.is_available():
        return Ranks()
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return Ranks()
        return init_distributed(device=device)
    return Ranks(dist.get_rank(), dist.get_world_size())


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks, and the collectives the stages use.

    With ``world_size == 1`` every method is a no-op that returns its input, so the
    stages run the same code with and without ``torch.distributed``.
    """

    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files and reports progress."""
        return self.rank == 0

    @contextmanager
    def _collective(self, what: str) -> Iterator[None]:
        """Turn a failed collective into an error that says what was going on and why."""
        try:
            yield
        except RuntimeError as e:
            raise LegoDNNError(
                f"rank {self.rank} of {self.world_size}: {what} failed: another rank stopped (its own error is in "
                f"its output) or did not answer within the process group's timeout (${TIMEOUT_ENV} or "
                f"init_distributed(timeout_s=...) where legodnn creates the group; default {DEFAULT_TIMEOUT_S:g} s). "
                f"{e}") from e

    def _small_device(self) -> torch.device:
        """Where the small tensors of flags and sums live: NCCL reduces CUDA tensors only."""
        if _dist().get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def barrier(self, what: str = "a barrier") -> None:
        """Wait until every rank is here; ``what`` names the wait in the error when one never comes."""
        if self.distributed:
            with self._collective(what):
                _dist().barrier()

    def broadcast(self, obj: Any, what: str) -> Any:
        """Rank 0's ``obj`` on every rank (pickled)."""
        if not self.distributed:
            return obj
        box = [obj]
        with self._collective(what):
            _dist().broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj: Any, what: str) -> List[Any]:
        """Every rank's ``obj``, in rank order, on every rank (pickled)."""
        if not self.distributed:
            return [obj]
        out: List[Any] = [None] * self.world_size
        with self._collective(what):
            _dist().all_gather_object(out, obj)
        return out

    def gather(self, obj: Any, what: str) -> Optional[List[Any]]:
        """Every rank's ``obj`` in rank order on rank 0; ``None`` elsewhere."""
        if not self.distributed:
            return [obj]
        out: Optional[List[Any]] = [None] * self.world_size if self.is_main else None
        with self._collective(what):
            _dist().gather_object(obj, out, dst=0)
        return out

    def sum_floats(self, values: Sequence[float], what: str) -> List[float]:
        """Element-wise sums over the ranks (float64, so counts stay exact)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.float64, device=self._small_device())
        with self._collective(what):
            _dist().all_reduce(t)
        return t.tolist()

    def max_int(self, value: int, what: str) -> int:
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self._small_device())
        with self._collective(what):
            _dist().all_reduce(t, op=_dist().ReduceOp.MAX)
        return int(t.item())

    def any(self, flag: bool, what: str) -> bool:
        """True on every rank when it is on any; decisions that lead to collectives (a
        checkpoint is due by one rank's clock) must be the same everywhere."""
        return bool(self.max_int(int(flag), what))

    def average_gradients(self, modules: Sequence[nn.Module]) -> List[bool]:
        """Average the gradients of ``modules`` over the ranks, as DDP does, and give their
        floating-point buffers rank 0's values; returns, per module, whether it has any
        gradient (its optimizer should step).

        A parameter's gradient is the mean over the ranks that have one (a rank whose
        batch did not reach a block contributes nothing, as a single process skips it);
        one no rank has stays ``None``, so optimizers skip it as they would in one
        process. Buffers follow rank 0 (DDP's ``broadcast_buffers``), sent in the same
        all-reduce as zeros from the other ranks: every rank ends with the same weights
        and statistics, bit for bit.
        """
        groups = [_unique([p for p in m.parameters() if p.requires_grad]) for m in modules]
        if not self.distributed:
            return [any(p.grad is not None for p in g) for g in groups]
        params = _unique([p for g in groups for p in g])
        buffers = _unique([b for m in modules for b in m.buffers() if b.is_floating_point()])
        device = self._small_device()
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.float64, device=device)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        sent = [b if self.is_main else torch.zeros_like(b) for b in buffers]
        with self._collective("averaging gradients"):
            _dist().all_reduce(has)
            _all_reduce_in_buckets(grads + sent)
        count = dict(zip(map(id, params), has.tolist()))
        for p, g in zip(params, grads):
            p.grad = g.div_(count[id(p)]) if count[id(p)] else None
        if not self.is_main:
            for b, s in zip(buffers, sent):
                b.copy_(s)
        return [any(count[id(p)] for p in g) for g in groups]


def _unique(tensors: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    seen, out = set(), []
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def _all_reduce_in_buckets(tensors: Sequence[torch.Tensor]) -> None:
    """Sum ``tensors`` over the ranks in place: one all-reduce per bucket of tensors of one
    dtype and device, instead of one per tensor (hundreds per step for a ResNet)."""
    dist = _dist()
    groups: Dict[Tuple[torch.dtype, torch.device], List[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    for group in groups.values():
        bucket: List[torch.Tensor] = []
        size = 0
        for t in group + [None]:  # type: ignore[list-item]
            if bucket and (t is None or size + t.numel() > _BUCKET_ELEMENTS):
                flat = torch.cat([b.reshape(-1) for b in bucket])
                dist.all_reduce(flat)
                offset = 0
                for b in bucket:
                    b.copy_(flat[offset:offset + b.numel()].view_as(b))
                    offset += b.numel()
                bucket, size = [], 0
            if t is not None:
                bucket.append(t)
                size += t.numel()


# -- the data -----------------------------------------------------------------------------


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` of ``n``, in order, without padding.

    For held-out and test data: every sample is scored once, so the reduced sums equal
    one process's. (``DistributedSampler`` pads the shards to equal length by repeating
    samples, which training needs and a metric must not see.)
    """

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


class _RankView:
    """One rank's view of the batches of a user's loader, which a checkpoint still
    reaches through :attr:`wrapped_loader` (for the loader's own random generators)."""

    def __init__(self, base: Iterable[Any], rank: int, world_size: int) -> None:
        self.base, self.rank, self.world_size = base, rank, world_size

    @property
    def wrapped_loader(self) -> Iterable[Any]:
        """The user's loader, whose own generators a checkpoint records."""
        return self.base


class RankStrided(_RankView):
    """Batches ``rank, rank + world, ...`` of an iterable that is not a plain ``DataLoader``
    (a list of batches, a loader with a custom sampler).

    Every rank reads every batch (the iterable must yield the same batches in the same
    order on every rank) and keeps its own. ``whole_rounds`` (training) drops a last
    round of fewer than ``world_size`` batches, so every rank takes the same number of
    optimizer steps; without it (evaluation) every batch is used once.
    """

    def __init__(self, base: Iterable[Any], rank: int, world_size: int, whole_rounds: bool) -> None:
        super().__init__(base, rank, world_size)
        self.whole_rounds = whole_rounds

    def __iter__(self) -> Iterator[Any]:
        mine, pending = None, False
        for i, batch in enumerate(self.base):
            if i % self.world_size == self.rank:
                mine, pending = batch, True
            if i % self.world_size == self.world_size - 1 and pending:
                yield mine
                mine, pending = None, False
        if pending and not self.whole_rounds:
            yield mine

    def __len__(self) -> int:
        n = len(self.base)  # type: ignore[arg-type]
        if self.whole_rounds:
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))


class SplitBatches(_RankView):
    """Rank ``r``'s slice of every batch of ``base``: samples ``[r * n // N, (r + 1) * n // N)``
    of a batch of ``n`` (:func:`split_batch`).

    For a stage that is data-parallel while every rank reads the same batches (the
    composition stage after descendant-parallel block training): the samples per
    optimizer step stay those of one process reading ``base``, and so do the number of
    steps and the learning-rate schedule. Every rank must read the same batches in the
    same order (the stages share rank 0's random generators at the start of each epoch).
    ``train``: a batch of fewer samples than ranks is skipped by every rank (each rank
    must take every step); for evaluation a rank whose slice is empty skips it, and every
    sample counts once.
    """

    def __init__(self, base: Iterable[Any], rank: int, world_size: int, train: bool) -> None:
        super().__init__(base, rank, world_size)
        self.train = train

    def __iter__(self) -> Iterator[Any]:
        for batch in self.base:
            n = _samples(batch)
            lo, hi = self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size
            if (self.train and n < self.world_size) or hi <= lo:
                continue
            yield split_batch(batch, lo, hi)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]


def split_batch(batch: Any, lo: int, hi: int) -> Any:
    """Samples ``lo:hi`` of a batch (its length: :func:`batch_len`, a dict's first field's).

    A tensor is sliced along its first dimension; a tuple, list or dict of fields (the
    usual ``(images, labels)``, or detection targets as a list of one dict per image)
    has each field sliced: a tensor whose first dimension is the batch's length, a list
    or tuple of that length (one item per sample), a dict's values alike. Anything else
    (a scalar, a shared setting) is kept whole on every rank.
    """
    n = _samples(batch)

    def field(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value[lo:hi] if value.dim() and value.shape[0] == n else value
        if isinstance(value, (list, tuple)) and len(value) == n:
            return value[lo:hi]
        if isinstance(value, dict):
            return {k: field(v) for k, v in value.items()}
        return value

    if isinstance(batch, torch.Tensor):
        return batch[lo:hi]
    if isinstance(batch, dict):
        return {k: field(v) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*(field(v) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(field(v) for v in batch)
    return batch


def _samples(batch: Any) -> int:
    """The samples in a batch, a dict of fields included (its first field's length)."""
    if isinstance(batch, dict):
        return batch_len(next(iter(batch.values()))) if batch else 0
    return batch_len(batch)


def check_parallel(parallel: Any) -> str:
    """``parallel`` checked at the public boundary: one of :data:`PARALLEL_MODES`."""
    if not isinstance(parallel, str) or parallel not in PARALLEL_MODES:
        raise InvalidArgumentError(
            f"parallel must be one of {', '.join(repr(m) for m in PARALLEL_MODES)}, got {parallel!r}: 'data' "
            "shards the data over the ranks (the default), 'descendants' shares the descendants out among them")
    return parallel


def balanced_split(costs: Sequence[float], world_size: int) -> List[List[int]]:
    """Indices of ``costs`` shared out among ``world_size`` ranks with loads as equal as
    a greedy split makes them: the largest first, each to the least-loaded rank (ties:
    the lower rank), so that every rank computes the same split. Returns, per rank, its
    indices in their original order (it trains them in the order one process would)."""
    load = [0.0] * world_size
    shares: List[List[int]] = [[] for _ in range(world_size)]
    for i in sorted(range(len(costs)), key=lambda i: (-float(costs[i]), i)):
        r = min(range(world_size), key=lambda r: (load[r], r))
        shares[r].append(i)
        load[r] += float(costs[i])
    return [sorted(share) for share in shares]


def _sharded(loader: Any) -> bool:
    return isinstance(loader, (RankStrided, SplitBatches)) or isinstance(getattr(loader, "sampler", None),
                                                                          (DistributedSampler, ShardSampler))


def shard_loader(loader: Any, ranks: Ranks, *, train: bool, seed: int = 0, pin_memory: bool = False) -> Any:
    """This rank's share of ``loader`` (``loader`` itself with one process).

    A ``DataLoader`` over a map-style data set with a sequential or random sampler is
    rebuilt with the same batch size, collate function and workers over this rank's
    indices: for training a ``DistributedSampler`` (shuffling with ``seed`` and the
    epoch when the original shuffled, padding the shards to equal length by repeating a
    few samples), for evaluation a :class:`ShardSampler` (no padding). A loader that is
    sharded already (a ``DistributedSampler`` of the user's) is kept. Anything else is
    split by batches (:class:`RankStrided`). ``pin_memory`` (the stages pass it for a
    CUDA device) pins a rebuilt loader's batches even where the original did not.
    """
    if not ranks.distributed or loader is None or _sharded(loader):
        return loader
    if (isinstance(loader, DataLoader) and loader.batch_size is not None
            and not isinstance(loader.dataset, IterableDataset) and hasattr(loader.dataset, "__len__")
            and type(loader.sampler) in (SequentialSampler, RandomSampler)):
        sampler: Sampler[int]
        if train:
            sampler = DistributedSampler(loader.dataset, ranks.world_size, ranks.rank,
                                         shuffle=isinstance(loader.sampler, RandomSampler), seed=seed)
        else:
            sampler = ShardSampler(len(loader.dataset), ranks.rank, ranks.world_size)
        workers: Dict[str, Any] = {}
        if loader.num_workers:
            workers = dict(prefetch_factor=loader.prefetch_factor, persistent_workers=loader.persistent_workers,
                           multiprocessing_context=loader.multiprocessing_context)
        return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler,
                          num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                          pin_memory=loader.pin_memory or pin_memory, drop_last=loader.drop_last, timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
                          generator=loader.generator, **workers)
    return RankStrided(loader, ranks.rank, ranks.world_size, whole_rounds=train)


def start_epoch(loader: Any, epoch: int) -> None:
    """Tell a ``DistributedSampler`` the epoch before its loader starts, so that it shuffles
    anew each epoch, and the same way on every rank and in a resumed run (a loader split
    by :class:`SplitBatches`: the user's loader's sampler)."""
    if isinstance(loader, SplitBatches):
        loader = loader.base
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)


def batch_len(batch: Any) -> int:
    """The number of samples in a batch: the length of its first tensor or list."""
    first = batch[0] if isinstance(batch, (list, tuple)) else batch
    if isinstance(first, torch.Tensor):
        return int(first.shape[0]) if first.dim() else 1
    if isinstance(first, (list, tuple)):
        return len(first)
    return 1


# -- metric accumulators ----------------------------------------------------------------------


def combine_accumulators(ranks: Ranks, accumulators: Mapping[Any, Any], fresh: Callable[[], Any]) -> Dict[Any, Any]:
    """The accumulators of every rank combined into one per key, the same on every rank.

    An accumulator with a ``merge(other)`` method is combined by it (each rank's object,
    pickled, folded in rank order). Any other is combined attribute by attribute,
    compared with a ``fresh()`` one: a number that is 0 in a fresh accumulator is a
    count and summed (``TopKAccuracy``'s correct and total); a tensor that is zero
    there, or that the accumulator creates on its first update, is summed (a confusion
    matrix); a list or dict empty there is concatenated in rank order (collected scores
    or detections); objects are combined the same way inside; anything else (settings
    like ``k`` or the number of classes) must be equal on every rank. What fits none of
    these raises and asks for ``merge``.
    """
    if not ranks.distributed:
        return dict(accumulators)
    if accumulators and all(callable(getattr(a, "merge", None)) for a in accumulators.values()):
        gathered = ranks.all_gather(dict(accumulators), "combining metric accumulators")
        out = {}
        for key in accumulators:
            merged = copy.deepcopy(gathered[0][key])
            for other in gathered[1:]:
                merged.merge(other[key])
            out[key] = merged
        return out
    states = {k: _state(a) for k, a in accumulators.items()}
    gathered = ranks.all_gather(states, "combining metric accumulators")
    reference = _state(fresh())
    out = {}
    for key, acc in accumulators.items():
        names = {n for g in gathered for n in g[key]}
        for name in sorted(names):
            where = f"{type(acc).__name__}.{name}"
            setattr(acc, name, _combine(reference.get(name), [g[key].get(name) for g in gathered], where))
        out[key] = acc
    return out


def _state(obj: Any) -> Dict[str, Any]:
    """An object's attributes without its callables (functions do not pickle reliably and
    are settings, not counts)."""
    return {n: v for n, v in vars(obj).items() if not callable(v)}


def _combine(ref: Any, values: List[Any], where: str) -> Any:
    """One attribute's values on every rank combined, by the rules of :func:`combine_accumulators`
    (``ref``: its value in a fresh accumulator). ``None`` is skipped: a rank that saw no
    batch has not created what the others did."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    first = present[0]

    def same() -> Any:
        if all(_equal(first, v) for v in present[1:]):
            return first
        raise LegoDNNError(
            f"cannot combine the metric accumulators of the ranks: {where} differs between them and is not a count "
            "(a number that is 0, a zero tensor or an empty list in a fresh accumulator); give the accumulator a "
            "merge(other) method that adds other's counts to its own")

    if isinstance(first, bool):
        return same()
    if isinstance(first, torch.Tensor):
        if ref is None or (isinstance(ref, torch.Tensor) and not bool(ref.any())):
            return functools.reduce(torch.add, present)
        return same()
    if isinstance(first, (int, float)):
        return sum(present) if isinstance(ref, (int, float)) and ref == 0 else same()
    if isinstance(first, list):
        return [x for v in present for x in v] if not ref else same()
    if isinstance(first, dict):
        if ref:
            return same()
        merged: Dict[Any, Any] = {}
        for v in present:
            for k, x in v.items():
                if k in merged:
                    raise LegoDNNError(f"cannot combine the metric accumulators of the ranks: two ranks hold {k!r} in "
                                       f"{where}; give the accumulator a merge(other) method")
                merged[k] = x
        return merged
    if hasattr(first, "__dict__") and all(type(v) is type(first) for v in present):
        inner = _state(ref) if type(ref) is type(first) else {}
        combined = copy.copy(first)
        for name in sorted({n for v in present for n in _state(v)}):
            setattr(combined, name, _combine(inner.get(name), [_state(v).get(name) for v in present],
                                             f"{where}.{name}"))
        return combined
    return same()


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and bool(
            torch.equal(a, b))
    try:
        return bool(a == b)
    except Exception:  # an object whose == is ambiguous (a numpy array) or fails
        return False
