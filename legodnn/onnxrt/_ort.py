"""Importing ONNX Runtime and making sessions: one place, so a missing package is one clear error."""

from __future__ import annotations

from typing import Any, Union

from ..errors import LegoDNNError

__all__ = ["require_ort", "require_onnx", "make_session"]


def require_ort() -> Any:
    """The ``onnxruntime`` module, or a :class:`LegoDNNError` saying how to install it.

    Imported here, not at the top of any module: ONNX Runtime is an optional dependency
    and ``import legodnn`` must work without it.
    """
    try:
        import onnxruntime
    except ImportError as exc:
        raise LegoDNNError("ONNX Runtime is not installed: pip install 'legodnn[onnx]' (onnx and onnxruntime), "
                           "or serve with backend='torch'") from exc
    return onnxruntime


def require_onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise LegoDNNError("the onnx package is not installed: pip install 'legodnn[onnx]'") from exc
    return onnx


def make_session(model: Union[bytes, str], num_threads: int = 1) -> Any:
    """A CPU session with ``num_threads`` intra-op threads and one inter-op thread.

    One thread by default: on an edge device the model shares the cores with the app, and
    latency profiles are measured with a fixed thread count so they hold at serving time.
    """
    ort = require_ort()
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(num_threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise LegoDNNError(f"ONNX Runtime cannot load a model ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}); export the ONNX files again") from exc
