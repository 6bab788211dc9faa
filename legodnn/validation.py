"""Checks of user arguments at the public boundary.

A wrong argument should fail where the user passed it, with a message that names the
argument, the value, what is allowed and how to fix it, not three frames deep inside
torch or, worse, be accepted and give a wrong result (``max_epoch=1.5`` running one
epoch, a NaN threshold never triggering). Public constructors and entry points call
these helpers first; each returns the value in the form the caller then uses (an
``int``, a ``float``, a device string, a shape tuple), so a check and its conversion
cannot drift apart.

Every error raised here derives from :class:`~legodnn.errors.LegoDNNError` and from
the built-in error old code may catch (``ValueError``, and ``TypeError`` for a wrong
type).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, Optional, Sequence, Tuple

import torch

from .errors import (
    ArgumentTypeError,
    DeviceUnavailableError,
    InvalidArgumentError,
    InvalidDataError,
)

__all__ = [
    "check_int",
    "check_float",
    "check_choice",
    "check_bool",
    "check_amp",
    "check_device",
    "check_input_size",
    "check_module",
    "check_first_batch",
]


def _got(value: Any) -> str:
    """How a rejected value is shown: its repr and, where that hides it, its type."""
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def _range_text(minimum: Optional[float], maximum: Optional[float], min_inclusive: bool,
                max_inclusive: bool) -> str:
    if minimum is not None and maximum is not None:
        return f"in {'[' if min_inclusive else '('}{minimum:g}, {maximum:g}{']' if max_inclusive else ')'}"
    if minimum is not None:
        return f"{'>=' if min_inclusive else '>'} {minimum:g}"
    if maximum is not None:
        return f"{'<=' if max_inclusive else '<'} {maximum:g}"
    return ""


def _is_bool(value: Any) -> bool:
    # bool is an int subclass (and numpy's bool_ is a number to some checks): True must
    # not pass as 1 epoch or 1 thread, it is almost always an argument in the wrong place
    return isinstance(value, bool) or type(value).__name__ == "bool_"


def check_int(
    name: str,
    value: Any,
    *,
    minimum: Optional[int] = None,
    maximum: Optional[int] = None,
    allow_none: bool = False,
    hint: str = "",
) -> Optional[int]:
    """``value`` as an ``int`` within [minimum, maximum]; ``None`` only with ``allow_none``.

    Floats are refused even when whole (2.0): a count given as a float is usually a
    computed value that was meant to be rounded one way or the other, and the caller
    should say which.
    """
    if value is None and allow_none:
        return None
    allowed = " ".join(filter(None, ["a whole number", _range_text(minimum, maximum, True, True)]))
    if allow_none:
        allowed += " or None"
    fix = hint or f"pass e.g. {name}={minimum if minimum is not None else (maximum if maximum is not None else 1)}"
    if _is_bool(value) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{name} must be {allowed}, got {_got(value)}; {fix}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise InvalidArgumentError(f"{name} must be {allowed}, got {value}; {fix}")
    return value


def check_float(
    name: str,
    value: Any,
    *,
    minimum: Optional[float] = None,
    maximum: Optional[float] = None,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
    finite: bool = True,
    allow_none: bool = False,
    hint: str = "",
) -> Optional[float]:
    """``value`` as a ``float`` within the bounds; NaN is always refused, infinity unless
    ``finite=False``; ``None`` only with ``allow_none``.

    NaN gets its own refusal because every comparison with it is false: a NaN threshold
    or budget would otherwise pass a range check written as ``not (x < lo)`` and then
    never trigger.
    """
    if value is None and allow_none:
        return None
    allowed = " ".join(filter(None, [
        "a finite number" if finite else "a number",
        _range_text(minimum, maximum, min_inclusive, max_inclusive),
    ]))
    if allow_none:
        allowed += " or None"
    fix = hint or f"pass e.g. {name}={_example(minimum, maximum, min_inclusive, max_inclusive):g}"
    if _is_bool(value) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be {allowed}, got {_got(value)}; {fix}")
    value = float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise InvalidArgumentError(f"{name} must be {allowed}, got {value}; {fix}")
    if minimum is not None and (value < minimum or (value == minimum and not min_inclusive)):
        raise InvalidArgumentError(f"{name} must be {allowed}, got {value:g}; {fix}")
    if maximum is not None and (value > maximum or (value == maximum and not max_inclusive)):
        raise InvalidArgumentError(f"{name} must be {allowed}, got {value:g}; {fix}")
    return value


def _example(minimum: Optional[float], maximum: Optional[float], min_inclusive: bool, max_inclusive: bool) -> float:
    """A value inside the bounds, for the message's "pass e.g." part."""
    if minimum is not None and maximum is not None:
        return (minimum + maximum) / 2
    if minimum is not None:
        return minimum if min_inclusive else minimum + 1
    if maximum is not None:
        return maximum if max_inclusive else maximum - 1
    return 0.0


def check_choice(name: str, value: Any, choices: Sequence[Any], hint: str = "") -> Any:
    """``value`` if it is one of ``choices`` (compared with ``==``), else an error listing them."""
    try:
        if value in choices:
            return value
    except TypeError:  # an unhashable or incomparable value is not a choice either
        pass
    listed = ", ".join(repr(c) for c in choices)
    raise InvalidArgumentError(f"{name} must be one of {listed}, got {_got(value)}" + (f"; {hint}" if hint else ""))


def check_bool(name: str, value: Any, hint: str = "") -> bool:
    """``value`` if it is ``True`` or ``False``: a flag given as ``1``, ``"yes"`` or ``None``
    is usually an argument in the wrong place, and ``"False"`` would be true."""
    if isinstance(value, bool):
        return value
    raise ArgumentTypeError(f"{name} must be True or False, got {_got(value)}; {hint or f'pass {name}=True or False'}")


def check_amp(name: str, value: Any, device: Any) -> Optional[str]:
    """``value`` as an automatic-mixed-precision mode for ``device``: ``None`` (fp32),
    ``"bf16"`` or ``"fp16"``.

    fp16 is refused on the CPU: its autocast there is slow and gains nothing, and fp16
    needs loss scaling; bf16 is the CPU's mixed precision. On a CUDA GPU without bf16
    (before Ampere) bf16 is refused in favour of fp16. Other devices (MPS, ...) take
    ``None`` only.
    """
    allowed = "None (fp32), 'bf16' or 'fp16'"
    if value is not None and not isinstance(value, str):
        raise ArgumentTypeError(f"{name} must be {allowed}, got {_got(value)}; pass e.g. {name}='bf16'")
    if value not in (None, "bf16", "fp16"):
        raise InvalidArgumentError(f"{name} must be {allowed}, got {value!r}; pass e.g. {name}='bf16'")
    kind = torch.device(device).type
    if value is None:
        return None
    if kind == "cpu" and value == "fp16":
        raise InvalidArgumentError(
            f"{name}='fp16' needs a CUDA device, got device={str(device)!r}: float16 autocast on the CPU is slow and "
            f"needs loss scaling; use {name}='bf16' on the CPU (or device='cuda' for fp16)")
    if kind == "cuda" and value == "bf16" and not torch.cuda.is_bf16_supported():
        raise InvalidArgumentError(
            f"{name}='bf16': the GPU of device={str(device)!r} has no bfloat16 (it needs an Ampere or newer GPU); "
            f"use {name}='fp16' (with loss scaling) or None")
    if kind not in ("cpu", "cuda"):
        raise InvalidArgumentError(
            f"{name}={value!r} is supported on 'cpu' (bf16) and 'cuda' devices, got device={str(device)!r}; "
            f"use {name}=None there")
    return value


def check_device(name: str, device: Any) -> str:
    """``device`` as a string torch accepts, refusing devices this machine does not have.

    torch parses ``"cuda"`` on a machine without a GPU happily and fails only at the
    first tensor moved there, deep inside a forward pass; this names the problem where
    the device was chosen. Returns ``str(torch.device(device))`` ("cuda", "cuda:1", "cpu").
    """
    if not isinstance(device, (str, torch.device)):
        raise ArgumentTypeError(f"{name} must be a device string such as 'cpu' or 'cuda:0', got {_got(device)}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise DeviceUnavailableError(
            f"{name}={device!r} is not a device torch knows ({exc}); use 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from None
    if dev.type == "cpu":
        return str(dev)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"{name}={device!r} asks for a CUDA GPU, but this machine has none (torch.cuda.is_available() is "
                "False: no GPU, no driver, or a CPU-only torch); use device='cpu'"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise DeviceUnavailableError(
                f"{name}={device!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}; "
                "choose one of them"
            )
        return str(dev)
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceUnavailableError(f"{name}={device!r}: Apple's MPS backend is not available here; use 'cpu'")
        return str(dev)
    backend = getattr(torch, dev.type, None)
    available = getattr(backend, "is_available", None)
    if callable(available) and available():
        return str(dev)
    raise DeviceUnavailableError(
        f"{name}={device!r}: device type {dev.type!r} is not available on this machine; use 'cpu' or 'cuda'"
    )


def check_input_size(name: str, value: Any, min_dims: int = 2) -> Tuple[int, ...]:
    """``value`` as the full input shape, a tuple of positive ints with the batch first.

    ``32`` or ``(32, 32)`` and shapes with a zero or negative entry are refused here:
    torch would either fail with "'int' object is not iterable" or trace an empty
    tensor and find nonsense blocks.
    """
    example = "(1, 3, 32, 32) for one 3-channel 32x32 image"
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list, torch.Size)):
        raise ArgumentTypeError(
            f"{name} must be the model's full input shape as a tuple (batch first), got {_got(value)}; "
            f"e.g. {example}"
        )
    if len(value) < min_dims:
        raise InvalidArgumentError(
            f"{name} must have at least {min_dims} dimensions (batch, channels, ...), got {tuple(value)!r}; "
            f"e.g. {example}"
        )
    bad = [d for d in value if _is_bool(d) or not isinstance(d, numbers.Integral) or int(d) < 1]
    if bad:
        raise InvalidArgumentError(
            f"{name} must hold positive whole numbers, got {tuple(value)!r} (bad: {bad}); e.g. {example}"
        )
    return tuple(int(d) for d in value)


def check_module(name: str, value: Any) -> Any:
    """``value`` if it is a ``torch.nn.Module``."""
    if not isinstance(value, torch.nn.Module):
        raise ArgumentTypeError(
            f"{name} must be a torch.nn.Module (the model object itself), got {_got(value)}; "
            "build the model first, e.g. model = MyNet()"
        )
    return value


# -- the first batch of a loader ---------------------------------------------------------

def _reads_data_and_labels(model_manager: Any) -> bool:
    """Whether the manager runs batches as ``(data, labels)`` with ``data`` fed to the model.

    That is the layout of :class:`~legodnn.model_manager.CommonModelManager` and of the
    task managers that inherit its ``forward_to_gen_mid_data``. A manager with its own
    (detection images as lists, dict batches) defines its own layout, which a generic
    check cannot know, so its batches are left to it.
    """
    from .model_manager.common_model_manager import CommonModelManager

    forward = getattr(type(model_manager), "forward_to_gen_mid_data", None)
    return forward is CommonModelManager.forward_to_gen_mid_data


def _class_count(model_manager: Any, model: torch.nn.Module, input_size: Tuple[int, ...], device: str) -> Optional[int]:
    """The number of classes when the model outputs class scores (N, C) on a dummy input
    (through the manager's own dummy forward), else ``None``."""
    out = model_manager.dummy_forward_to_gen_mid_data(model, input_size, device)
    if isinstance(out, torch.Tensor) and out.dim() == 2 and out.is_floating_point() and out.shape[1] >= 2:
        return int(out.shape[1])
    return None


def check_first_batch(
    loader_name: str,
    loader: Iterable[Any],
    model_manager: Any,
    model: torch.nn.Module,
    input_size: Sequence[int],
    device: str,
) -> None:
    """Check the first batch of ``loader`` before any training or profiling uses it.

    Wrong data otherwise shows as a torch error from inside a block ("expected input to
    have 3 channels") or, worse, as a result: NaN images profiled to an accuracy of
    0.06, labels out of range to 0.0. For managers that read ``(data, labels)``
    batches (see :func:`_reads_data_and_labels`) it checks that a batch is such a pair,
    that ``data`` is a floating tensor with the model's number of dimensions and
    channels and only finite values, and, when the model outputs class scores, that the
    labels are int64 class indices in range. Only the first batch is read: the check is
    about the loader's layout, it is not a scan of the data set. A one-pass iterator
    is not checked, since reading its first batch here would take it from the caller.
    """
    if loader is None or not _reads_data_and_labels(model_manager):
        return
    it = iter(loader)
    if it is loader:
        return  # a one-pass iterator (a generator) cannot be peeked at without losing its first batch
    batch = next(it, None)
    if batch is None:
        return  # an empty loader is reported by the caller, which knows what it needed the data for
    where = f"the first batch of {loader_name}"
    layout = ("legodnn's CommonModelManager reads (data, labels) pairs: yield tuples (a DataLoader over a "
              "TensorDataset(images, labels) does), or use a model manager whose forward_to_gen_mid_data reads "
              "your batches")
    if isinstance(batch, dict):
        raise InvalidDataError(f"{where} is a dict (keys {sorted(map(str, batch))[:6]}), not (data, labels); {layout}")
    if isinstance(batch, torch.Tensor):
        raise InvalidDataError(
            f"{where} is a bare tensor of shape {tuple(batch.shape)}, not (data, labels); {layout}")
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        shown = f"a {type(batch).__name__} of {len(batch)} item(s)" if isinstance(batch, (tuple, list)) else _got(batch)
        raise InvalidDataError(f"{where} is {shown}, not (data, labels); {layout}")
    data, labels = batch[0], batch[1]
    size = tuple(input_size)
    if not isinstance(data, torch.Tensor):
        raise InvalidDataError(f"{where}: data (its first item) must be a tensor, got {_got(data)}; {layout}")
    if not data.is_floating_point():
        raise InvalidDataError(
            f"{where}: data is a {data.dtype} tensor; the model needs floating point input: convert it, e.g. "
            "images.float() / 255 for 8-bit images"
        )
    if data.dim() != len(size) or data.shape[1] != size[1]:
        raise InvalidDataError(
            f"{where}: data has shape {tuple(data.shape)}, but the model takes input like {size} "
            f"({size[1]} channels, {len(size)} dimensions with the batch first); convert the data (e.g. "
            "grayscale to RGB with x.expand(-1, 3, -1, -1)) or build the block manager for this input"
        )
    bad = int((~torch.isfinite(data)).sum())
    if bad:
        raise InvalidDataError(
            f"{where}: data holds {bad} NaN or infinite value(s) of {data.numel()}; clean or re-normalize the "
            "data (a division by a zero standard deviation gives NaN)"
        )
    if isinstance(labels, torch.Tensor) and labels.dim() >= 1 and labels.shape[0] != data.shape[0]:
        raise InvalidDataError(
            f"{where}: {data.shape[0]} samples but {labels.shape[0]} labels; each sample needs its label")
    if not (isinstance(labels, torch.Tensor) and labels.dim() == 1):
        return  # not one label per sample: not a classification batch
    classes = _class_count(model_manager, model, size, device)
    if classes is None:
        return
    if labels.dtype != torch.int64:
        raise InvalidDataError(
            f"{where}: labels are {labels.dtype}, but the model outputs scores for {classes} classes: labels must "
            "be int64 class indices (labels.long())"
        )
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise InvalidDataError(
            f"{where}: labels range from {int(labels.min())} to {int(labels.max())}, but the model outputs "
            f"{classes} class scores: labels must lie in [0, {classes}); remap the labels or build the model "
            f"with num_classes={int(labels.max()) + 1}"
        )



def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> str:
    """Why module ``a`` differs from ``b`` ("" when they hold the same tensors)."""
    sa, sb = a.state_dict(), b.state_dict()
    if list(sa) != list(sb):
        return "its layers differ"
    for key in sa:
        if sa[key].shape != sb[key].shape:
            return f"{key} has shape {tuple(sa[key].shape)}, not {tuple(sb[key].shape)}"
        if not torch.equal(sa[key].detach().cpu(), sb[key].detach().cpu()):
            return f"its weights differ ({key})"
    return ""


def warn_if_ignored_teacher(name: str, teacher: Any, block_manager: Any) -> None:
    """The original API passes the teacher next to the block manager, which already holds it.

    The block manager's model is the teacher legodnn uses; a different model passed here
    would be silently ignored, so it is named in a warning (once per call site, as
    Python's warnings filter does), with the reason.
    """
    import warnings

    model = getattr(block_manager, "model", None)
    if teacher is None or teacher is model or not isinstance(teacher, torch.nn.Module) or model is None:
        return
    reason = _same_weights(teacher, model)
    if reason:
        warnings.warn(f"{name} is not the model the block manager was built from ({reason}); legodnn uses the "
                      "block manager's model as the teacher: pass that model to silence this", stacklevel=3)


def warn_if_ignored_manager(name: str, model_manager: Any, block_manager: Any) -> None:
    """A model manager other than the block manager's is not used here: say so once per call site."""
    import warnings

    if model_manager is None or model_manager is getattr(block_manager, "model_manager", None):
        return
    warnings.warn(f"{name} is not used here: the block manager's model manager is (pass None or the same one)",
                  stacklevel=3)


#: The precisions a descendant can be served in (int8 ones are ONNX Runtime graphs).
PRECISIONS = ("float", "int8")


def check_precisions(precisions: Any) -> Tuple[str, ...]:
    """``precisions`` as a tuple in canonical order: a non-empty subset of float and int8."""
    if isinstance(precisions, str):
        precisions = (precisions,)
    try:
        given = list(precisions)
    except TypeError:
        given = None
    if not given or any(p not in PRECISIONS for p in given):
        raise InvalidArgumentError(
            f"precisions must list some of {list(PRECISIONS)}, got {precisions!r}; e.g. precisions=('float', 'int8')")
    return tuple(p for p in PRECISIONS if p in given)
