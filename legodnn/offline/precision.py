"""The fast GPU path of the offline stages: mixed precision, channels_last, pinned memory, timing.

Every stage (:class:`~legodnn.offline.block_retrainer.BlockRetrainer`, the composition
stage, :class:`~legodnn.offline.block_profiler.BlockProfiler`) takes the same two
options and hands them to :func:`resolve_precision`:

* ``amp``: ``None`` (fp32, the default), ``"bf16"`` or ``"fp16"``. The forwards (the
  teacher's and the descendants') run under :func:`torch.autocast` in that dtype;
  losses, optimizer steps and weights stay fp32. bf16 has fp32's range, so it needs no
  loss scaling: use it where the hardware has it (Ampere and newer GPUs; CPUs with
  AVX512-BF16 or AMX run it fast, others slowly but correctly). fp16 is CUDA only and
  scales the loss with a :class:`torch.amp.GradScaler` (:class:`LossScaler`).
* ``channels_last``: the teacher, its frame and the descendants hold their 4-D
  weights, and batches their images, in NHWC layout while a stage runs, which is the
  layout tensor cores and oneDNN convolve fastest. The values do not change, only the
  strides; the teacher is given back in the default layout, and stores are written
  contiguous, so the files are the same layout either way.

With both off nothing here touches a tensor: the stages compute exactly what they
computed before these options existed, bit for bit.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Dict, Iterator, Optional, Sequence

import torch
from torch import nn

from ..validation import check_amp, check_bool

__all__ = ["AMP_CHOICES", "LossScaler", "Precision", "pin_memory", "record_precision", "resolve_precision",
           "restore_precision", "synchronize"]

#: the values ``amp=`` accepts
AMP_CHOICES = (None, "bf16", "fp16")
logger = logging.getLogger(__name__)
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """How a stage runs its forwards: autocast dtype (``amp``) and memory layout."""

    amp: Optional[str] = None
    channels_last: bool = False
    device_type: str = "cpu"

    @property
    def dtype(self) -> Optional[torch.dtype]:
        return _DTYPES.get(self.amp) if self.amp else None

    def autocast(self) -> ContextManager[Any]:
        """The forward's context: :func:`torch.autocast` in ``amp``'s dtype, or nothing."""
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def batch(self, batch: Any) -> Any:
        """``batch`` with its 4-D floating-point tensors (images) in channels_last; ``batch``
        itself without ``channels_last``. Labels, masks of integers and 3-D tensors are kept."""
        if not self.channels_last:
            return batch
        return _to_channels_last(batch)

    def fp32(self, value: Any) -> Any:
        """``value`` with its half-precision tensors as float32, for the loss; ``value`` itself
        without ``amp`` (a float64 model stays float64)."""
        if self.amp is None:
            return value
        return _map_tensors(value, lambda t: t.float() if t.dtype in (torch.bfloat16, torch.float16) else t)

    @contextlib.contextmanager
    def layout(self, modules: Sequence[nn.Module]) -> Iterator[None]:
        """``modules`` in channels_last while the block runs, back to the default layout after
        (the same values; parameters stay the same objects, so optimizers keep them)."""
        if not self.channels_last:
            yield
            return
        unique = list({id(m): m for m in modules}.values())
        for m in unique:
            m.to(memory_format=torch.channels_last)
        try:
            yield
        finally:
            for m in unique:
                m.to(memory_format=torch.contiguous_format)

    def describe(self) -> Dict[str, Any]:
        """What a checkpoint records, to warn when a run resumes with other options."""
        return {"amp": self.amp, "channels_last": self.channels_last}


def _map_tensors(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``fn`` applied to every tensor in ``value`` (nested tuples, named tuples, lists, dicts)."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple):
        items = [_map_tensors(v, fn) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    if isinstance(value, list):
        return [_map_tensors(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: _map_tensors(v, fn) for k, v in value.items()}
    return value


def _to_channels_last(value: Any) -> Any:
    return _map_tensors(value, lambda t: t.contiguous(memory_format=torch.channels_last)
                        if t.dim() == 4 and t.is_floating_point() else t)


def resolve_precision(amp: Any, channels_last: Any, device: str) -> Precision:
    """Check the options (see :func:`~legodnn.validation.check_amp`) and return them for ``device``."""
    amp = check_amp("amp", amp, device)
    channels_last = check_bool("channels_last", channels_last,
                               hint="pass channels_last=True (NHWC layout, faster convolutions on GPUs) or False")
    return Precision(amp, channels_last, torch.device(device).type)


class LossScaler:
    """Loss scaling for fp16 (a :class:`torch.amp.GradScaler`); a pass-through for fp32 and bf16.

    Several optimizers may share it (the block stage has one per descendant): scale each
    loss, step each optimizer through it, then :meth:`update` once per batch.
    """

    def __init__(self, precision: Precision) -> None:
        self._scaler = torch.amp.GradScaler(precision.device_type) if precision.amp == "fp16" else None
        self._stepped = False

    @property
    def enabled(self) -> bool:
        return self._scaler is not None

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss if self._scaler is None else self._scaler.scale(loss)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()``; with fp16, unscaled first and skipped when a gradient overflowed."""
        if self._scaler is None:
            optimizer.step()
        else:
            self._scaler.step(optimizer)
            self._stepped = True

    def update(self) -> None:
        """The next loss scale, after every optimizer of the batch stepped (a batch where none
        did leaves it as it is)."""
        if self._scaler is not None and self._stepped:
            self._scaler.update()
        self._stepped = False

    def state_dict(self) -> Optional[Dict[str, Any]]:
        """The scale and its growth counter (numbers only: checkpoints keep it in ``state.json``)."""
        if self._scaler is None:
            return None
        return dict(self._scaler.state_dict())

    def load_state_dict(self, state: Optional[Dict[str, Any]]) -> None:
        if self._scaler is not None and state:
            self._scaler.load_state_dict(state)


def record_precision(state: Dict[str, Any], precision: Precision, scaler: LossScaler) -> None:
    """Put the options and the loss scale into a checkpoint's ``state`` (nothing with both off,
    so such checkpoints are the ones written before these options existed)."""
    for key, value in (("precision", precision.describe() if precision != Precision(device_type=precision.device_type)
                        else None), ("grad_scaler", scaler.state_dict())):
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value


def restore_precision(state: Dict[str, Any], precision: Precision, scaler: LossScaler, what: str) -> None:
    """The loss scale of a checkpoint's ``state``, and a warning when it was taken with other options
    (the weights carry on; the rest of the run is then not the one an uninterrupted run gives)."""
    recorded = state.get("precision") or Precision().describe()
    if recorded != precision.describe():
        logger.warning("%s was checkpointed with amp=%r, channels_last=%r and resumes with amp=%r, channels_last=%r",
                       what, recorded.get("amp"), recorded.get("channels_last"), precision.amp,
                       precision.channels_last)
    scaler.load_state_dict(state.get("grad_scaler"))


def synchronize(device: Any) -> None:
    """Wait for the GPU's queued work, so that a clock read next measures the work, not its launch."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pin_memory(loader: Any, device: Any) -> Any:
    """``loader`` with pinned host memory when ``device`` is a CUDA GPU (faster copies to it).

    Only for ``DataLoader`` objects legodnn built itself (held-out splits, shards, the
    command's loaders): it sets their ``pin_memory`` flag, which a user's loader keeps as
    the user chose. Anything else, and every loader for a CPU device, is returned as it is.
    """
    from torch.utils.data import DataLoader

    if torch.device(device).type == "cuda" and isinstance(loader, DataLoader) and not loader.pin_memory:
        loader.pin_memory = True
    return loader
