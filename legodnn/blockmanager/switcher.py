"""BlockSwitcher: a live model whose blocks are swapped for descendants in place.

The device holds the user's model code; the switcher traces it the same way the block
manager did, checks the architecture fingerprint, takes every weight from the blocks
directory and serves ``switcher.model``. A switch builds a new configuration that
shares every unchanged module with the old one and installs it with one attribute
assignment: a forward that started before the switch finishes on the old blocks.
"""

from __future__ import annotations

import copy
import numbers
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..errors import ArgumentTypeError, CorruptedStoreError, InvalidSparsityError
from ..validation import check_int
from .channels import ChannelAnalysis
from .fingerprint import architecture_fingerprint
from .loading import DescendantFactory, load_state_into
from .measure import count_bytes
from .partition import Partition, replace_modules
from .store import BlockStore
from .tracing import dummy_runner, trace_model

__all__ = ["BlockSwitcher", "LegoModel", "SwitchResult"]

Sparsities = Union[Sequence[float], Mapping[str, float]]


@dataclass(frozen=True)
class SwitchResult:
    """What one :meth:`BlockSwitcher.switch` did."""

    sparsities: Tuple[float, ...]  # the configuration now live, in block order
    changed: Tuple[str, ...]  # blocks that were replaced
    from_disk: Tuple[str, ...]  # of those, the ones read from the blocks directory
    bytes_loaded: int  # bytes read from disk
    seconds: float


def _sparsity_value(name: str, value: Any) -> float:
    """One requested sparsity as a float: a real number or a one-element tensor, not a
    bool, a string or None (``float('0.3')`` would pass a string through unnoticed)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a number (a sparsity such as 0.3), got {value!r} "
                                f"({type(value).__name__})")
    return float(value)


class LegoModel(nn.Module):
    """The live model. ``body`` is one complete configuration, replaced as a whole."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        body = self.body  # read once: a concurrent switch cannot mix configurations
        return body(*args, **kwargs)


class BlockSwitcher:
    """Serve a model assembled from a blocks directory and switch its blocks live.

    ``model`` is the teacher's architecture (its weights may be random: every weight
    comes from the store); it is traced once, the way the block manager traced it.
    Descendants already built stay cached in memory up to ``cache_bytes``; the live
    ones never leave the cache. :meth:`from_block_manager` reuses a block manager's
    trace instead.

    Args:
        blocks_dir: a blocks directory (or an open :class:`BlockStore`) made from this
            model's architecture; its fingerprint is checked.
        model: the model code, the teacher's architecture; its weights may be random.
        device: where the served model runs.
        cache_bytes: the bytes of built descendants kept in memory besides the live ones.
        model_manager: how to run the model for tracing, as at extraction (``None``:
            one random tensor per input shape).
        copy_model: trace a copy, leaving ``model`` as it was.
    """

    def __init__(
        self,
        blocks_dir: Union[str, BlockStore],
        model: nn.Module,
        device: str = "cpu",
        cache_bytes: int = 256 * 2**20,
        model_manager: Any = None,
        *,
        copy_model: bool = True,
        _prepared: Optional[Tuple[nn.Module, Partition, Dict[str, ChannelAnalysis]]] = None,
    ) -> None:
        check_int("cache_bytes", cache_bytes, minimum=0, hint="pass the bytes of descendants to keep cached, e.g. 2**28")
        self.store = blocks_dir if isinstance(blocks_dir, BlockStore) else BlockStore(blocks_dir)
        self.device = device
        self.cache_bytes = int(cache_bytes)
        self.block_sparsity = self.store.block_sparsity
        if _prepared is None:
            model = (copy.deepcopy(model) if copy_model else model).to(device)
            manifest = self.store.manifest
            runner = dummy_runner(model, model_manager, manifest.model_input_size, device)
            parts = trace_model(model, runner, paths=[p.path for p in manifest.parts])
            self.store.check_fingerprint(architecture_fingerprint(model, parts))
            partition = Partition.from_specs(parts, self.store.blocks)
            analyses = {}  # each block's channel analysis is made on its first read from disk
        else:
            model, partition, analyses = _prepared
        self.partition = partition
        self.block_names = [s.name for s in self.partition.specs]
        self._factory = DescendantFactory(self.store, self.partition.blocks, analyses, device)
        body = self.partition.compose(model, self.partition.blocks)
        self._load_frame(body)
        for name, block in self.partition.blocks.items():
            load_state_into(self.store, block, name, 0.0)
        self.model = LegoModel(body)
        self.model.train(model.training)
        self._current: Dict[str, float] = {n: 0.0 for n in self.block_names}
        self._cache: "OrderedDict[Tuple[str, float], Tuple[nn.Module, int]]" = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_block_manager(cls, blocks_dir: Union[str, BlockStore], block_manager: Any, device: str = "cpu",
                           cache_bytes: int = 256 * 2**20) -> "BlockSwitcher":
        """A switcher that reuses ``block_manager``'s trace and analyses (copied: its teacher stays as it is)."""
        store = block_manager.open_store(blocks_dir)
        analyses = {n: block_manager._analysis(n) for n in block_manager.block_names}
        model, partition, analyses = copy.deepcopy((block_manager.model, block_manager.partition, analyses))
        model.to(device)
        for block in partition.blocks.values():
            block.to(device)
        return cls(store, model, device, cache_bytes, _prepared=(model, partition, analyses))

    # -- loading ----------------------------------------------------------------
    def _load_frame(self, body: nn.Module) -> None:
        state = self.store.frame_tensors()
        block_prefixes = tuple(self.partition.block_path(n) + "." for n in self.block_names)
        try:
            missing, unexpected = body.load_state_dict(state, strict=False)
        except RuntimeError as exc:
            raise CorruptedStoreError(f"frame weights do not fit the model: {exc}") from exc
        missing = [k for k in missing if not k.startswith(block_prefixes)]
        if missing or unexpected:
            raise CorruptedStoreError(
                f"frame weights do not match the model (missing {missing[:5]}, unexpected {unexpected[:5]}); "
                "extract the blocks again for this model"
            )

    def _build(self, name: str, sparsity: float) -> Tuple[nn.Module, int]:
        """A descendant from its spec and stored weights; returns it and the bytes read."""
        if sparsity == 0.0:
            return self.partition.blocks[name], 0
        return self._factory.build(name, sparsity)

    def _get(self, name: str, sparsity: float) -> Tuple[nn.Module, int]:
        key = (name, sparsity)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit[0], 0
        module, loaded = self._build(name, sparsity)
        self._cache[key] = (module, loaded if sparsity else count_bytes(module))
        return module, loaded

    def _evict(self) -> None:
        live = {(n, s) for n, s in self._current.items()}
        total = sum(size for _, size in self._cache.values())
        for key in list(self._cache):
            if total <= self.cache_bytes:
                break
            if key not in live:
                total -= self._cache.pop(key)[1]

    # -- public -----------------------------------------------------------------
    @property
    def sparsities(self) -> List[float]:
        """The live configuration, in block order."""
        return [self._current[n] for n in self.block_names]

    def _normalize(self, sparsities: Sparsities) -> Dict[str, float]:
        """The requested sparsity of each named block (every block for a list), each one of
        the store's sparsities; anything else is refused with what to pass instead.

        A dict names only the blocks that change: :meth:`switch` merges it with the live
        configuration under its lock, so two concurrent partial switches cannot undo
        each other.
        """
        usage = (f"pass one sparsity per block in block order (a list of {len(self.block_names)} numbers, e.g. "
                 f"[0.0] * {len(self.block_names)}) or a dict {{block name: sparsity}}")
        if isinstance(sparsities, Mapping):
            unknown = [k for k in sparsities if k not in self.block_names]
            if unknown:
                raise InvalidSparsityError(f"unknown block names {unknown}; blocks are {self.block_names}")
            wanted = {k: _sparsity_value(f"sparsities[{k!r}]", v) for k, v in sparsities.items()}
        elif isinstance(sparsities, (str, bytes)) or not isinstance(sparsities, Iterable):
            raise ArgumentTypeError(f"sparsities must be a list or a dict, got {sparsities!r} "
                                    f"({type(sparsities).__name__}); {usage}")
        else:
            values = list(sparsities)
            if len(values) != len(self.block_names):
                raise InvalidSparsityError(
                    f"got {len(values)} sparsities for {len(self.block_names)} blocks; give one per block "
                    "(in block order) or a dict by block name"
                )
            wanted = {n: _sparsity_value(f"sparsities[{i}]", v) for i, (n, v) in enumerate(zip(self.block_names, values))}
        for name, s in wanted.items():
            match = [a for a in self.block_sparsity if abs(a - s) < 1e-9]
            if not match:
                raise InvalidSparsityError(
                    f"block {name}: sparsity {s} is not in the blocks directory; available {self.block_sparsity}"
                )
            wanted[name] = match[0]
        return wanted

    def switch(self, sparsities: Sparsities) -> SwitchResult:
        """Install a configuration, replacing only the blocks whose sparsity changes.

        Args:
            sparsities: one sparsity per block, in block order, or a dict
                ``{block_name: sparsity}`` for some blocks (the others stay).

        Returns:
            What was installed: every block's sparsity, the blocks changed, those read
            from disk, the bytes loaded and the seconds the switch took.
        """
        given = self._normalize(sparsities)
        with self._lock:
            start = time.perf_counter()
            wanted = {**self._current, **given}
            changes: Dict[str, nn.Module] = {}
            from_disk: List[str] = []
            loaded = 0
            for name in self.block_names:
                if wanted[name] == self._current[name]:
                    continue
                module, n_bytes = self._get(name, wanted[name])
                if n_bytes:
                    from_disk.append(name)
                    loaded += n_bytes
                module.train(self.model.training)
                changes[self.partition.block_path(name)] = module
            if changes:
                self.model.body = replace_modules(self.model.body, changes)
                self._current = wanted
                self._evict()
            # built under the lock: a concurrent switch must not change what this one reports
            return SwitchResult(
                sparsities=tuple(self.sparsities),
                changed=tuple(n for n in self.block_names if self.partition.block_path(n) in changes),
                from_disk=tuple(from_disk),
                bytes_loaded=loaded,
                seconds=time.perf_counter() - start,
            )

    def preload(self, sparsities: Optional[Sequence[float]] = None) -> None:
        """Build and cache descendants ahead of time (all sparsities by default)."""
        with self._lock:
            for name in self.block_names:
                for s in sparsities if sparsities is not None else self.block_sparsity:
                    self._get(name, self._normalize({name: s})[name])
            self._evict()

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()
