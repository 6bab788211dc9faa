"""Export any composed model (or block) to ONNX and run it with ONNX Runtime.

Devices often run ONNX Runtime rather than PyTorch; profiling latency through the
same runtime the device will use is what makes the estimates hold there. Needs the
``onnx`` extra (``pip install legodnn[onnx]``).
"""

from __future__ import annotations

import inspect
import io
import os
import warnings
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..blockmanager.store import claim_file
from ..errors import LegoDNNError
from ..validation import check_bool

__all__ = ["export_onnx", "OnnxRunner"]


def export_onnx(
    model: nn.Module,
    input_shape: Sequence[int],
    path: Optional[Union[str, os.PathLike]] = None,
    opset_version: int = 17,
    overwrite: bool = False,
) -> bytes:
    """Export ``model`` (eval mode, CPU copy of the input) for one input of ``input_shape``.

    The batch dimension is dynamic. Writes ``path`` atomically when given and returns the
    serialized model either way. An existing file at ``path`` is replaced only with
    ``overwrite=True`` (legodnn cannot tell its own earlier export from a user's file);
    the check comes before the export, so a refused path costs nothing.
    """
    if path is not None:
        path = claim_file(path, check_bool("overwrite", overwrite), "path")
    was_training = model.training
    model.eval()
    x = torch.rand(tuple(input_shape), device=next(model.parameters()).device)
    buf = io.BytesIO()
    kwargs = dict(
        opset_version=opset_version,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
    )
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # the TorchScript exporter: no onnxscript needed, works back to torch 2.3
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), buf, **kwargs)
    except Exception as exc:
        raise LegoDNNError(f"ONNX export failed ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    finally:
        model.train(was_training)
    data = buf.getvalue()
    if path is not None:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return data


class OnnxRunner:
    """An ONNX Runtime session with a fixed thread count, called like a module on tensors."""

    def __init__(self, onnx_model: Union[bytes, str, os.PathLike], num_threads: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise LegoDNNError("ONNX Runtime is not installed: pip install 'legodnn[onnx]'") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        source = onnx_model if isinstance(onnx_model, bytes) else str(onnx_model)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def run_numpy(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.run_numpy(x.detach().cpu().numpy()))
