"""ONNX Runtime serving with block hot-swap, and int8 descendants as a second scaling axis.

Needs the ``onnx`` extra (``pip install 'legodnn[onnx]'``); nothing here imports
onnxruntime until it is used, so ``import legodnn`` works without it.
"""

from .backend import OnnxCosts, attach_onnxruntime
from .export import TorchOnnxSource, export_onnx_store, run_plan_torch
from .onnx_store import ONNX_DIR, PRECISIONS, OnnxFile, OnnxManifest, OnnxStore
from .profile import OnnxOption, OnnxProfile, profile_onnx
from .segments import FramePlan, Step, split_frame
from .serving import OrtBlockSwitcher, OrtLegoModel, OrtSwitchResult

__all__ = [
    "ONNX_DIR",
    "PRECISIONS",
    "FramePlan",
    "OnnxCosts",
    "OnnxOption",
    "OnnxProfile",
    "OnnxFile",
    "OnnxManifest",
    "OnnxStore",
    "OrtBlockSwitcher",
    "OrtLegoModel",
    "OrtSwitchResult",
    "Step",
    "TorchOnnxSource",
    "attach_onnxruntime",
    "export_onnx_store",
    "profile_onnx",
    "run_plan_torch",
    "split_frame",
]
