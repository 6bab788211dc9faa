"""Export a block store to ONNX: the frame's segments, every descendant, optionally int8.

:func:`export_onnx_store` is the offline step (it needs the model code, torch, onnx and
onnxruntime, and calibration data for int8); the device then serves from the folder it
writes with ONNX Runtime alone. :class:`TorchOnnxSource` does the same in memory, for a
store that has no ONNX folder: float sessions are exported when first needed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import fx, nn
from tqdm.auto import tqdm

from ..blockmanager.loading import DescendantFactory
from ..blockmanager.store import BlockStore
from ..blockmanager.switcher import BlockSwitcher
from ..errors import ArgumentTypeError, LegoDNNError
from ..validation import check_int
from .int8 import initializer_bytes, quantize_block
from .onnx_store import (
    OnnxFile,
    OnnxManifest,
    OnnxStore,
    OnnxStoreWriter,
    default_onnx_dir,
    onnx_file_name,
)
from .segments import FramePlan, export_module, split_frame

__all__ = ["export_onnx_store", "TorchOnnxSource", "run_plan_torch"]

logger = logging.getLogger(__name__)


def run_plan_torch(plan: FramePlan, segments: Dict[str, fx.GraphModule], blocks: Dict[str, nn.Module],
                   x: torch.Tensor) -> Dict[int, torch.Tensor]:
    """Every value of the chain for input ``x``, computed in PyTorch (the reference the
    ONNX chain is checked against, and the example inputs each graph is exported with)."""
    values: Dict[int, torch.Tensor] = {0: x}
    with torch.no_grad():
        for step in plan.steps:
            args = [values[v] for v in step.inputs]
            if step.kind == "segment":
                outs = segments[step.name](*args)
            else:
                outs = (blocks[step.name](*args),)
            for v, t in zip(step.outputs, outs):
                values[v] = t
    return values


class TorchOnnxSource:
    """ONNX models of a store's frame and descendants, exported from PyTorch in memory.

    Built from a :class:`BlockSwitcher` (which holds the traced frame and the teacher
    blocks); descendants are built from the store and exported on first use.
    """

    def __init__(self, switcher: BlockSwitcher, opset_version: int = 17) -> None:
        self.store = switcher.store
        self.opset_version = opset_version
        self.block_sparsity = self.store.block_sparsity
        shape = tuple(self.store.manifest.model_input_size)
        body = switcher.model.body
        was_training = body.training
        body.eval()
        try:
            example = torch.rand(shape, generator=torch.Generator().manual_seed(0))
            self.plan, self.segments = split_frame(body, example)
            self.teacher_blocks = dict(switcher.partition.blocks)
            self.example = run_plan_torch(self.plan, self.segments, self.teacher_blocks, example)
        finally:
            body.train(was_training)
        self._factory = DescendantFactory(self.store, switcher.partition.blocks, {}, "cpu")
        self.precisions: Tuple[str, ...] = ("float",)

    def step(self, name: str) -> Any:
        return next(s for s in self.plan.steps if s.name == name)

    def segment_model(self, name: str) -> bytes:
        step = self.step(name)
        return export_module(self.segments[name], [self.example[v] for v in step.inputs], step.input_names(),
                             step.output_names(), self.opset_version)

    def block_module(self, name: str, sparsity: float) -> nn.Module:
        if sparsity == 0.0:
            return self.teacher_blocks[name]
        module, _ = self._factory.build(name, sparsity)
        return module.eval()

    def block_model(self, name: str, sparsity: float, precision: str = "float") -> Tuple[bytes, int]:
        """ONNX bytes of one descendant and the bytes read from disk to make them."""
        if precision != "float":
            raise LegoDNNError(f"{precision} descendants need an ONNX folder with them: run "
                               "export_onnx_store(blocks_dir, model, calibration=loader) first")
        step = self.step(name)
        module = self.block_module(name, sparsity)
        data = export_module(module, [self.example[step.inputs[0]]], step.input_names(), step.output_names(),
                             self.opset_version)
        return data, 0


def _capture_block_inputs(source: TorchOnnxSource, batches: Iterable[Any], limit: int) -> Dict[str, List[np.ndarray]]:
    """Each teacher block's inputs on up to ``limit`` calibration batches (run through the chain)."""
    captured: Dict[str, List[np.ndarray]] = {s.name: [] for s in source.plan.block_steps}
    n = 0
    for batch in batches:
        if n >= limit:
            break
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(x, torch.Tensor):
            raise ArgumentTypeError(f"calibration batches must be tensors or (inputs, ...) tuples, got "
                                    f"{type(x).__name__}; pass a DataLoader of the training or held-out images")
        values = run_plan_torch(source.plan, source.segments, source.teacher_blocks, x.float().cpu())
        for step in source.plan.block_steps:
            captured[step.name].append(values[step.inputs[0]].numpy().copy())
        n += 1
    if n == 0:
        raise LegoDNNError("calibration data yielded no batch; pass a loader with a few batches of inputs")
    return captured


def export_onnx_store(
    blocks_dir: Union[str, BlockStore],
    model: nn.Module,
    *,
    calibration: Optional[Iterable[Any]] = None,
    calibration_batches: int = 8,
    onnx_dir: Optional[Union[str, Path]] = None,
    model_manager: Any = None,
    opset_version: int = 17,
    per_channel: bool = True,
    verbose: bool = True,
) -> OnnxStore:
    """Write the ONNX folder of a (trained) block store and return it opened.

    Args:
        blocks_dir: the block store (its weights are exported as they are now).
        model: the model code the store was extracted from (weights may be random).
        calibration: batches (tensors or ``(inputs, targets)``) to calibrate int8
            descendants on; ``None`` exports float only.
        calibration_batches: at most this many batches are used.
        onnx_dir: where to write; default ``<blocks_dir>/onnx``.
    Returns:
        The :class:`OnnxStore` just written, whose manifest records the store's weights digest.
    """
    calibration_batches = check_int("calibration_batches", calibration_batches, minimum=1,
                                    hint="pass the calibration batches to use, e.g. calibration_batches=8")
    store = blocks_dir if isinstance(blocks_dir, BlockStore) else BlockStore(blocks_dir)
    switcher = BlockSwitcher(store, model, "cpu", 0, model_manager, copy_model=True)
    source = TorchOnnxSource(switcher, opset_version)
    target = Path(onnx_dir) if onnx_dir is not None else default_onnx_dir(store)
    captured = _capture_block_inputs(source, calibration, calibration_batches) if calibration is not None else None
    writer = OnnxStoreWriter(target)
    try:
        files: List[OnnxFile] = []
        for step in source.plan.steps:
            if step.kind == "segment":
                data = source.segment_model(step.name)
                file = f"{step.name}.onnx"
                files.append(OnnxFile(step.name, -1.0, "float", file, writer.write(file, data),
                                      initializer_bytes(data)))
        jobs = [(s.name, sp) for s in source.plan.block_steps for sp in source.block_sparsity]
        for name, sp in tqdm(jobs, desc="export ONNX", disable=not verbose, leave=False):
            data, _ = source.block_model(name, sp)
            file = onnx_file_name(name, sp, "float")
            files.append(OnnxFile(name, sp, "float", file, writer.write(file, data), initializer_bytes(data)))
            if captured is not None:
                step = source.step(name)
                q = quantize_block(data, captured[name], step.input_names()[0], per_channel)
                file = onnx_file_name(name, sp, "int8")
                files.append(OnnxFile(name, sp, "int8", file, writer.write(file, q), initializer_bytes(q)))
        calib: Dict[str, Any] = {}
        if captured is not None:
            first = next(iter(captured.values()))
            calib = {"method": "minmax", "format": "QDQ", "weights": "int8 per channel" if per_channel else
                     "int8 per tensor", "activations": "uint8 per tensor", "batches": len(first),
                     "samples": int(sum(a.shape[0] for a in first))}
        manifest = OnnxManifest(store.fingerprint, store.weights_digest, tuple(store.manifest.model_input_size),
                                opset_version, source.plan, tuple(files), calib)
        return writer.commit(manifest)
    except BaseException:
        writer.abort()
        raise
