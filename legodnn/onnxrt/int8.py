"""int8 descendants: post-training static quantization of a float block's ONNX graph.

Why ONNX Runtime's quantizer rather than PyTorch's FX graph-mode quantization: the int8
model has to run where it is served, and PyTorch eager cannot run FX-quantized graphs
faster than float on most CPUs without a backend per platform (fbgemm/qnnpack) while ONNX
Runtime runs QDQ graphs with its own int8 kernels on x86 and ARM alike. QDQ keeps float
inputs and outputs (QuantizeLinear/DequantizeLinear inside the graph), so an int8
descendant has the same interface as the float one and any mix of float and int8 blocks
chains without conversions at the boundaries. Weights are quantized per output channel
(signed int8), activations per tensor (unsigned int8), with min/max calibration on the
teacher's own inputs to that block, captured by running the teacher on calibration data:
the inputs the block will see when its neighbours are the teacher's.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from ..errors import InvalidArgumentError, LegoDNNError
from ._ort import require_onnx, require_ort

__all__ = ["quantize_block", "initializer_bytes"]


def initializer_bytes(model: bytes) -> int:
    """Bytes of every initializer of an ONNX model (weights, biases, scales, zero points)."""
    onnx = require_onnx()
    from onnx import numpy_helper

    proto = onnx.load_from_string(model)
    return int(sum(numpy_helper.to_array(t).nbytes for t in proto.graph.initializer))


def quantize_block(float_model: bytes, calibration: Sequence[np.ndarray], input_name: str,
                   per_channel: bool = True) -> bytes:
    """The int8 (QDQ) version of one block's float ONNX model, calibrated on ``calibration``
    (arrays of the block's input, batch first)."""
    if not calibration:
        raise InvalidArgumentError("quantize_block needs at least one calibration input; pass the block's inputs "
                                   "captured from the teacher on a few batches")
    require_ort()
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Optional[Iterator[Any]] = None

        def get_next(self) -> Optional[dict]:
            if self._it is None:
                self._it = iter(calibration)
            x = next(self._it, None)
            return None if x is None else {input_name: np.ascontiguousarray(x, dtype=np.float32)}

        def rewind(self) -> None:
            self._it = None

    with tempfile.TemporaryDirectory(prefix="legodnn-int8-") as tmp:  # quantize_static works on files
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(float_model)
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantizer logs advice on the root logger for every block
        try:
            quantize_static(str(src), str(dst), _Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        except Exception as exc:
            raise LegoDNNError(f"int8 quantization failed ({type(exc).__name__}: {exc}); build the store "
                               "without int8 (calibration=None)") from exc
        finally:
            root.setLevel(level)
        return dst.read_bytes()
