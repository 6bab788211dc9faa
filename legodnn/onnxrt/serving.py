"""Serve a composed model with ONNX Runtime and hot-swap its blocks.

The model runs as a chain of sessions: one per frame segment and one per live
descendant (:mod:`.segments`). A configuration is an immutable tuple of sessions; a swap
builds the new tuple (reusing every unchanged session, loading only the new ones) and
installs it with one assignment, so an inference that started before the swap finishes
on the old configuration and one that starts after runs wholly on the new one: nothing
ever runs half of each. Nothing else is re-exported or re-created.

Every tensor of the chain lives in a buffer allocated once per input shape and bound to
the sessions with I/O binding: a block's output buffer is the next step's input, no copy
between sessions. Every descendant of a block has the same input and output shapes, so
a swap keeps the buffers. Concurrent inferences each take their own set of buffers
from a pool (one is made when none is free).

Fusion (``fuse=True``, the default): every session boundary costs more than the call
(each session runs slower in sequence than alone, and the CPU provider converts to and
from its blocked layout at every boundary; measured in :mod:`.fuse`). So right after a
swap the chain serves, and a background thread builds one session of the whole
configuration from the same ONNX files (:func:`~.fuse.fuse_steps`, a few milliseconds to
merge and create here) and installs it with one more assignment when that configuration
is still live. Fused sessions are cached like the others (counted in ``cache_bytes``),
so swapping back to a recent configuration is fused at once. Outputs of the fused
session equal the chain's up to float rounding (about 1e-6 here).
"""

from __future__ import annotations

import numbers
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..blockmanager.store import BlockStore
from ..errors import ArgumentTypeError, InvalidArgumentError, InvalidSparsityError, LegoDNNError
from ..validation import check_int
from ._ort import make_session
from .fuse import fuse_steps, value_name
from .onnx_store import PRECISIONS, OnnxStore
from .segments import FramePlan, Step

__all__ = ["OrtBlockSwitcher", "OrtLegoModel", "OrtSwitchResult"]


@dataclass(frozen=True)
class OrtSwitchResult:
    """What one :meth:`OrtBlockSwitcher.switch` did (the fields of ``SwitchResult`` and the precisions)."""

    sparsities: Tuple[float, ...]
    precisions: Tuple[str, ...]
    changed: Tuple[str, ...]
    from_disk: Tuple[str, ...]  # of the changed blocks, those whose session was created now
    bytes_loaded: int
    seconds: float


class _Session:
    """One loaded ONNX model of the chain and what it costs."""

    def __init__(self, data: bytes, num_threads: int, step: Step, key: Tuple[Any, ...], fused: bool = False) -> None:
        self.session = make_session(data, num_threads)
        self.step = step
        self.key = key
        self.nbytes = len(data)
        self.data = None if fused else data  # kept to fuse configurations without reading or exporting again
        if fused:
            self.input_names = [value_name(v) for v in step.inputs]
            self.output_names = [value_name(v) for v in step.outputs]
        else:
            self.input_names = step.input_names()
            self.output_names = step.output_names()


@dataclass(frozen=True)
class _Config:
    """One whole configuration: the session of every step, in chain order, and the fused
    session of the whole configuration once it is built (None until then, or without fusion)."""

    sessions: Tuple[_Session, ...]
    choice: Tuple[Tuple[float, str], ...]  # (sparsity, precision) per block, in block order
    fused: Optional[_Session] = None


#: How long closing waits for a fusion in progress (building one session takes tens of ms).
_EXIT_WAIT_S = 60.0


class _FuseJobs:
    """What the background fusion thread waits on (holds no reference to the switcher)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.pending: Optional[Tuple[Tuple[float, str], ...]] = None
        self.busy = False
        self.closed = False
        self.thread: Optional[threading.Thread] = None

    def close(self, wait_s: float = 0.0) -> None:
        """Tell the worker to stop; with ``wait_s``, wait for it to finish the fusion it is
        in. At interpreter exit that wait matters: a daemon thread still inside ONNX Runtime
        when the process tears down aborts it ("terminate called without an active exception")."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        thread = self.thread
        if wait_s > 0 and thread is not None and thread is not threading.current_thread():
            thread.join(wait_s)


def _fuse_worker(jobs: _FuseJobs, ref: "weakref.ref[OrtBlockSwitcher]") -> None:
    while True:
        with jobs.cond:
            while jobs.pending is None and not jobs.closed:
                jobs.cond.wait()
            if jobs.closed:
                return
            choice, jobs.pending, jobs.busy = jobs.pending, None, True
        try:
            sw = ref()
            if sw is None:
                return
            sw._fuse_and_install(choice)
            del sw
        finally:
            with jobs.cond:
                jobs.busy = False
                jobs.cond.notify_all()


class _Buffers:
    """Pre-allocated arrays for every value of the chain at one input shape, and the I/O
    bindings of each session to them (made on first use; dropped with their session)."""

    def __init__(self, arrays: Dict[int, np.ndarray]) -> None:
        ort = __import__("onnxruntime")
        self.arrays = arrays
        self.values = {v: ort.OrtValue.ortvalue_from_numpy(a) for v, a in arrays.items()}
        self.bindings: "weakref.WeakKeyDictionary[_Session, Any]" = weakref.WeakKeyDictionary()

    def binding(self, entry: _Session) -> Any:
        b = self.bindings.get(entry)
        if b is None:
            b = entry.session.io_binding()
            for name, v in zip(entry.input_names, entry.step.inputs):
                b.bind_ortvalue_input(name, self.values[v])
            for name, v in zip(entry.output_names, entry.step.outputs):
                b.bind_ortvalue_output(name, self.values[v])
            self.bindings[entry] = b
        return b


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        if x.dtype == torch.float32 and x.device.type == "cpu" and not x.requires_grad:
            return x.numpy()  # no copy: run() copies it into its bound buffer anyway
        return x.detach().cpu().float().numpy()
    if isinstance(x, np.ndarray):
        return x.astype(np.float32, copy=False)
    raise ArgumentTypeError(f"the model input must be a torch.Tensor or a numpy array, got {type(x).__name__}")


class OrtBlockSwitcher:
    """A live model served by ONNX Runtime sessions, switched block by block.

    ``source`` gives the ONNX models: an :class:`~.onnx_store.OnnxStore` (files written by
    :func:`~.export.export_onnx_store`, with int8 versions when calibrated) or a
    :class:`~.export.TorchOnnxSource` (float, exported in memory). Sessions not live stay
    cached up to ``cache_bytes`` of ONNX model bytes. ``num_threads``: intra-op threads of
    every session. ``fuse``: after each swap, build one session of the whole configuration
    in the background and serve with it once built (see the module's doc); ``False``
    serves the chain only.
    """

    def __init__(self, source: Any, block_sparsity: Sequence[float], num_threads: int = 1,
                 cache_bytes: int = 256 * 2**20, fuse: bool = True) -> None:
        check_int("num_threads", num_threads, minimum=1, hint="pass the CPU threads per session, e.g. num_threads=1")
        check_int("cache_bytes", cache_bytes, minimum=0, hint="pass the bytes of sessions to keep cached, e.g. 2**28")
        if not isinstance(fuse, bool):
            raise ArgumentTypeError(f"fuse must be True or False, got {fuse!r}")
        self.fuse = fuse
        self.fuse_error: Optional[str] = None  # why fusion failed (the chain then serves alone)
        self._jobs = _FuseJobs()
        self._worker: Optional[threading.Thread] = None
        weakref.finalize(self, self._jobs.close, _EXIT_WAIT_S)  # collected, or at exit: stop and wait
        self.source = source
        self.num_threads = int(num_threads)
        self.cache_bytes = int(cache_bytes)
        self.block_sparsity = [float(s) for s in block_sparsity]
        self.plan: FramePlan = source.plan if not isinstance(source, OnnxStore) else source.manifest.plan
        self.block_names = [s.name for s in self.plan.block_steps]
        self.precisions: Tuple[str, ...] = (source.manifest.precisions if isinstance(source, OnnxStore)
                                            else tuple(source.precisions))
        self._lock = threading.Lock()
        self._cache: "OrderedDict[Tuple[Any, ...], _Session]" = OrderedDict()
        self._pool: Dict[Tuple[int, ...], List[_Buffers]] = {}
        self._pool_lock = threading.Lock()
        self._segments = {s.name: _Session(self._segment_bytes(s.name), self.num_threads, s, ("segment", s.name))
                          for s in self.plan.steps if s.kind == "segment"}
        choice = tuple((0.0, "float") for _ in self.block_names)
        self._config = self._assemble(choice)
        self.model = OrtLegoModel(self)
        self._request_fusion()

    @classmethod
    def from_store(cls, blocks_dir: Union[str, BlockStore], model: Optional[nn.Module] = None, *,
                   onnx_dir: Optional[str] = None, num_threads: int = 1, cache_bytes: int = 256 * 2**20,
                   model_manager: Any = None, fuse: bool = True) -> "OrtBlockSwitcher":
        """The switcher for a block store: its ONNX folder when it has one (``onnx_dir``, or
        ``<blocks_dir>/onnx``), else float sessions exported in memory from ``model``."""
        store = blocks_dir if isinstance(blocks_dir, BlockStore) else BlockStore(blocks_dir)
        onnx_store = OnnxStore.for_store(store, onnx_dir)
        if onnx_store is not None:
            return cls(onnx_store, store.block_sparsity, num_threads, cache_bytes, fuse)
        if model is None:
            raise InvalidArgumentError(
                f"{str(store.root)!r} has no ONNX folder: pass the model code (model=...) to export float sessions "
                "in memory, or run export_onnx_store(blocks_dir, model) first")
        from ..blockmanager.switcher import BlockSwitcher
        from .export import TorchOnnxSource

        switcher = BlockSwitcher(store, model, "cpu", 0, model_manager, copy_model=True)
        return cls(TorchOnnxSource(switcher), store.block_sparsity, num_threads, cache_bytes, fuse)

    # -- loading ---------------------------------------------------------------------
    def _segment_bytes(self, name: str) -> bytes:
        if isinstance(self.source, OnnxStore):
            ref = self.source.manifest.find(name)
            if ref is None:
                raise LegoDNNError(f"the ONNX folder {str(self.source.root)!r} has no {name}; export it again")
            return self.source.read(ref)
        return self.source.segment_model(name)

    def _block_bytes(self, name: str, sparsity: float, precision: str) -> bytes:
        if isinstance(self.source, OnnxStore):
            ref = self.source.manifest.find(name, sparsity, precision)
            if ref is None:
                raise LegoDNNError(
                    f"the ONNX folder {str(self.source.root)!r} has no {precision} descendant of {name} at sparsity "
                    f"{sparsity:g} (it holds {list(self.precisions)}); export it again with calibration data for "
                    "int8")
            return self.source.read(ref)
        return self.source.block_model(name, sparsity, precision)[0]

    def _get(self, name: str, sparsity: float, precision: str) -> Tuple[_Session, int]:
        key = ("block", name, sparsity, precision)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit, 0
        step = next(s for s in self.plan.steps if s.kind == "block" and s.name == name)
        data = self._block_bytes(name, sparsity, precision)
        entry = _Session(data, self.num_threads, step, key)
        self._cache[key] = entry
        return entry, len(data)

    def _assemble(self, choice: Tuple[Tuple[float, str], ...]) -> _Config:
        blocks = {n: self._get(n, s, p)[0] for n, (s, p) in zip(self.block_names, choice)}
        sessions = tuple(self._segments[s.name] if s.kind == "segment" else blocks[s.name] for s in self.plan.steps)
        fused = self._cache.get(("fused", choice)) if self.fuse else None
        if fused is not None:
            self._cache.move_to_end(fused.key)
        return _Config(sessions, choice, fused)

    # -- fusion ----------------------------------------------------------------------
    def fused_session(self, choice: Optional[Sequence[Tuple[float, str]]] = None) -> _Session:
        """The one session of configuration ``choice`` ((sparsity, precision) per block;
        default the live one), built now from the chain's ONNX files unless cached."""
        choice = tuple(self._config.choice if choice is None else ((float(s), str(p)) for s, p in choice))
        key = ("fused", choice)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                return hit
            blocks = {n: self._get(n, s, p)[0] for n, (s, p) in zip(self.block_names, choice)}
            parts = [(st, self._segments[st.name].data if st.kind == "segment" else blocks[st.name].data)
                     for st in self.plan.steps]
        data = fuse_steps(self.plan, parts)
        step = Step("fused", "fused", (0,), tuple(self.plan.outputs))
        entry = _Session(data, self.num_threads, step, key, fused=True)
        with self._lock:
            entry = self._cache.setdefault(key, entry)
            self._evict()
        return entry

    def _fuse_and_install(self, choice: Tuple[Tuple[float, str], ...]) -> None:
        if self._config.choice != choice or self._config.fused is not None:
            return  # swapped again meanwhile: that configuration's request follows
        try:
            entry = self.fused_session(choice)
        except Exception as exc:  # the chain keeps serving; say why once
            if self.fuse_error is None:
                warnings.warn(f"ONNX Runtime: cannot fuse the configuration into one session ({exc}); serving the "
                              "chain of sessions", stacklevel=2)
            self.fuse_error = f"{type(exc).__name__}: {exc}"
            return
        with self._lock:
            config = self._config
            if config.choice == choice and config.fused is None:
                self._config = _Config(config.sessions, choice, entry)  # one assignment, like a swap
                self._evict()

    def _request_fusion(self) -> None:
        if not self.fuse or self._config.fused is not None or self.fuse_error is not None:
            return
        jobs = self._jobs
        with jobs.cond:
            jobs.pending = self._config.choice
            if self._worker is None:
                self._worker = threading.Thread(target=_fuse_worker, args=(jobs, weakref.ref(self)),
                                                name="legodnn-ort-fuse", daemon=True)
                jobs.thread = self._worker
                self._worker.start()
            jobs.cond.notify_all()

    @property
    def is_fused(self) -> bool:
        """Whether the live configuration is served by its fused session."""
        return self._config.fused is not None

    def wait_fused(self, timeout: Optional[float] = None) -> bool:
        """Wait until the live configuration is fused (or fusion is off or failed); True when fused."""
        if not self.fuse:
            return False
        deadline = None if timeout is None else time.monotonic() + timeout
        jobs = self._jobs
        with jobs.cond:
            while self._config.fused is None and self.fuse_error is None and (jobs.pending is not None or jobs.busy):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                jobs.cond.wait(left)
        return self._config.fused is not None

    def close(self) -> None:
        """Stop the background fusion thread and wait for the fusion it is in (also done when
        the switcher is collected and at interpreter exit)."""
        self._jobs.close(_EXIT_WAIT_S)

    def _evict(self) -> None:
        live = {e.key for e in self._config.sessions}
        if self._config.fused is not None:
            live.add(self._config.fused.key)
        total = sum(e.nbytes for e in self._cache.values())
        for key in list(self._cache):
            if total <= self.cache_bytes:
                break
            if key not in live:
                total -= self._cache.pop(key).nbytes

    # -- serving ---------------------------------------------------------------------
    def _take(self, config: _Config, x: np.ndarray) -> _Buffers:
        key = tuple(x.shape)
        with self._pool_lock:
            free = self._pool.get(key)
            if free:
                return free.pop()
        return self._allocate(config, x)

    def _give(self, buffers: _Buffers, shape: Tuple[int, ...]) -> None:
        with self._pool_lock:
            self._pool.setdefault(shape, []).append(buffers)

    def _allocate(self, config: _Config, x: np.ndarray) -> _Buffers:
        """Buffers for input shape ``x.shape``, their shapes found by one plain run."""
        values: Dict[int, np.ndarray] = {0: x}
        for entry in config.sessions:
            feeds = {n: values[v] for n, v in zip(entry.input_names, entry.step.inputs)}
            outs = entry.session.run(entry.output_names, feeds)
            for v, out in zip(entry.step.outputs, outs):
                values[v] = out
        return _Buffers({v: np.empty_like(a) for v, a in values.items()})

    def run(self, x: Any) -> Union[torch.Tensor, Tuple[torch.Tensor, ...]]:
        """One inference on the configuration live when it starts (thread-safe)."""
        x = np.ascontiguousarray(_as_numpy(x))
        config = self._config  # read once: a concurrent switch cannot mix configurations
        buffers = self._take(config, x)
        try:
            np.copyto(buffers.arrays[0], x)
            if config.fused is not None:
                config.fused.session.run_with_iobinding(buffers.binding(config.fused))
            else:
                for entry in config.sessions:
                    entry.session.run_with_iobinding(buffers.binding(entry))
            outs = tuple(torch.from_numpy(buffers.arrays[v].copy()) for v in self.plan.outputs)
        finally:
            self._give(buffers, tuple(x.shape))
        return outs if self.plan.tuple_output else outs[0]

    # -- switching -------------------------------------------------------------------
    @property
    def sparsities(self) -> List[float]:
        return [s for s, _ in self._config.choice]

    @property
    def live_precisions(self) -> List[str]:
        return [p for _, p in self._config.choice]

    def _normalize(self, sparsities: Any, precisions: Any) -> Dict[str, Tuple[float, str]]:
        names = self.block_names
        if isinstance(sparsities, Mapping):
            unknown = [k for k in sparsities if k not in names]
            if unknown:
                raise InvalidSparsityError(f"unknown block names {unknown}; blocks are {names}")
            wanted_s = dict(sparsities)
        elif isinstance(sparsities, (str, bytes)) or not isinstance(sparsities, Iterable):
            raise ArgumentTypeError(f"sparsities must be a list (one per block) or a dict by block name, got "
                                    f"{sparsities!r} ({type(sparsities).__name__})")
        else:
            values = list(sparsities)
            if len(values) != len(names):
                raise InvalidSparsityError(f"got {len(values)} sparsities for {len(names)} blocks; give one per "
                                           "block (in block order) or a dict by block name")
            wanted_s = dict(zip(names, values))
        if precisions is None or isinstance(precisions, str):
            wanted_p = {n: precisions or "float" for n in wanted_s}
        elif isinstance(precisions, Mapping):
            wanted_p = {n: precisions.get(n, "float") for n in wanted_s}
        else:
            values = list(precisions)
            if len(values) != len(names):
                raise InvalidArgumentError(f"got {len(values)} precisions for {len(names)} blocks; give one per "
                                           "block, a dict by block name, or one string for all")
            full = dict(zip(names, values))
            wanted_p = {n: full[n] for n in wanted_s}
        out = {}
        for n, s in wanted_s.items():
            if isinstance(s, bool) or not isinstance(s, numbers.Real):
                raise ArgumentTypeError(f"sparsity of {n} must be a number, got {s!r} ({type(s).__name__})")
            match = [a for a in self.block_sparsity if abs(a - float(s)) < 1e-9]
            if not match:
                raise InvalidSparsityError(f"block {n}: sparsity {s} is not in the store; available "
                                           f"{self.block_sparsity}")
            p = wanted_p[n]
            if p not in PRECISIONS:
                raise InvalidArgumentError(f"precision of {n} must be one of {list(PRECISIONS)}, got {p!r}")
            if p not in self.precisions:
                raise InvalidArgumentError(
                    f"precision {p!r} for {n}: this ONNX source holds {list(self.precisions)} only; run "
                    "export_onnx_store(blocks_dir, model, calibration=loader) for int8 descendants")
            out[n] = (match[0], p)
        return out

    def switch(self, sparsities: Any, precisions: Any = None) -> OrtSwitchResult:
        """Install a configuration, loading sessions only for the blocks that change.

        ``sparsities``: one per block or a dict by name (only those change); ``precisions``:
        ``"float"``/``"int8"`` for all, one per block, or a dict (default float).
        """
        given = self._normalize(sparsities, precisions)
        with self._lock:
            start = time.perf_counter()
            old = dict(zip(self.block_names, self._config.choice))
            wanted = {**old, **given}
            changed, from_disk, loaded = [], [], 0
            for n in self.block_names:
                if wanted[n] != old[n]:
                    changed.append(n)
                    _, read = self._get(n, *wanted[n])
                    if read:
                        from_disk.append(n)
                        loaded += read
            if changed:
                self._config = self._assemble(tuple(wanted[n] for n in self.block_names))
                self._evict()
            choice = self._config.choice
            result = OrtSwitchResult(tuple(s for s, _ in choice), tuple(p for _, p in choice), tuple(changed),
                                     tuple(from_disk), loaded, time.perf_counter() - start)
        if changed:
            self._request_fusion()  # the chain serves until the fused session is installed
        return result

    def preload(self, precisions: Optional[Sequence[str]] = None) -> None:
        """Create the sessions of every descendant ahead of time (all precisions by default)."""
        with self._lock:
            for n in self.block_names:
                for p in precisions or self.precisions:
                    for s in self.block_sparsity:
                        self._get(n, s, p)
            self._evict()

    def clear_cache(self) -> None:
        with self._lock:
            live = {e.key for e in self._config.sessions}
            if self._config.fused is not None:
                live.add(self._config.fused.key)
            for key in [k for k in self._cache if k not in live]:
                del self._cache[key]


class OrtLegoModel(nn.Module):
    """The ONNX Runtime chain called like a PyTorch model (CPU tensors in, CPU tensors out),
    so model managers, metrics and the runtime use it unchanged. It has no parameters and
    does not train: ``train()`` only sets the flag."""

    def __init__(self, switcher: OrtBlockSwitcher) -> None:
        super().__init__()
        object.__setattr__(self, "_switcher", switcher)  # not a submodule: no recursion into it

    @property
    def switcher(self) -> OrtBlockSwitcher:
        return self._switcher

    def forward(self, x: Any) -> Any:
        return self._switcher.run(x)
