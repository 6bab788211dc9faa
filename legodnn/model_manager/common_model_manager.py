"""Model manager for image classifiers: ``(data, target)`` batches, top-1 accuracy.

It is also the base for other tasks: a manager for, say, segmentation overrides only
``get_model_acc`` (and ``forward_to_gen_mid_data`` if its batches look different), and
inherits size, FLOPs and latency, which do not depend on the task.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import statistics
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from legodnn.errors import InvalidArgumentError, InvalidDataError
from legodnn.model_manager.abstract_model_manager import AbstractModelManager, Device

__all__ = ["CommonModelManager", "TopKAccuracy"]


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode and restore its previous mode on exit.

    Measuring must not leave a model the caller was training in eval mode (or the
    other way round); only the top-level flag is saved, as ``train()`` sets all.
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a stateless model)."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return torch.device("cpu") if first is None else first.device


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TopKAccuracy:
    """Top-k accuracy accumulated over batches of ``(data, target)``."""

    def __init__(self, k: int = 1) -> None:
        self.k = k
        self.correct = 0
        self.total = 0

    def update(self, outputs: torch.Tensor, batch_data: Sequence[Any]) -> None:
        target = batch_data[1].to(outputs.device)
        top = outputs.topk(self.k, dim=1).indices
        self.correct += int((top == target.unsqueeze(1)).any(dim=1).sum().item())
        self.total += target.numel()

    def compute(self) -> float:
        if self.total == 0:
            raise InvalidDataError("test_loader yielded no samples; cannot compute accuracy: give a loader with at least one batch")
        return self.correct / self.total


class CommonModelManager(AbstractModelManager):
    """Manager for classifiers whose loader yields ``(data, target)`` with class indices.

    Every method leaves the model's train/eval mode as it found it. Methods that take a
    ``device`` move the model there (``nn.Module.to`` is in place), as the original did.
    """

    def forward_to_gen_mid_data(
        self, model: nn.Module, batch_data: Sequence[Any], device: Device
    ) -> Any:
        """Run the model in eval mode on ``batch_data[0]``, without building a graph.

        ``no_grad`` rather than ``inference_mode``: tensors captured by hooks here are
        later used as training inputs, which inference tensors cannot be.
        """
        model.to(device)
        data = batch_data[0].to(device)
        with _eval_mode(model), torch.no_grad():
            return model(data)

    def dummy_forward_to_gen_mid_data(
        self, model: nn.Module, model_input_size: Sequence[int], device: Device
    ) -> Any:
        """Run the model in eval mode on uniform random input of ``model_input_size``."""
        model.to(device)
        data = torch.rand(tuple(model_input_size), device=device)
        with _eval_mode(model), torch.no_grad():
            return model(data)

    def metric_accumulator(self) -> "TopKAccuracy":
        return TopKAccuracy(k=1)

    def get_model_acc(self, model: nn.Module, test_loader: Iterable[Any], device: Device) -> float:
        """Top-1 accuracy in [0, 1] over every sample of ``test_loader``.

        Raises ``ValueError`` if the loader yields no samples, since no accuracy can be
        reported (returning 0.0 would silently rank the model as the worst).
        """
        acc = self.metric_accumulator()
        for batch in test_loader:
            acc.update(self.forward_to_gen_mid_data(model, batch, device), batch)
        return acc.compute()

    def get_model_size(self, model: nn.Module) -> int:
        """Bytes held by all parameters and buffers (e.g. BatchNorm running statistics).

        This is the in-memory footprint of the weights, independent of any file format;
        a tensor shared between modules is counted once.
        """
        tensors = list(model.parameters()) + list(model.buffers())
        return sum(t.numel() * t.element_size() for t in tensors)

    def get_model_flops_and_param(
        self, model: nn.Module, model_input_size: Sequence[int]
    ) -> tuple[int, int]:
        """``(FLOPs, parameters)`` for one forward pass on random input.

        FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on aten ops, so
        subclasses of ``nn.Conv2d`` and functional calls are counted too. One
        multiply-add counts as 2 FLOPs; bias additions, normalisation and activations
        are not counted. The count runs on a deep copy in eval mode, so the caller's
        model (its BatchNorm statistics, its hooks, its mode) is left untouched.
        """
        counted = copy.deepcopy(model).eval()
        data = torch.rand(tuple(model_input_size), device=_model_device(counted))
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            counted(data)
        params = sum(p.numel() for p in model.parameters())
        return int(counter.get_total_flops()), params

    def get_model_latency(
        self,
        model: nn.Module,
        sample_num: int,
        model_input_size: Sequence[int],
        device: Device,
        *,
        warmup_num: int = 5,
    ) -> float:
        """Median wall-clock seconds of one forward pass over ``sample_num`` timed runs.

        ``warmup_num`` untimed runs come first, so one-off costs (allocator growth, cuDNN
        algorithm search, lazy initialisation) do not count. The median, not the mean,
        keeps one preempted run from skewing the result. On CUDA, the device is
        synchronised around each run.
        """
        if sample_num < 1:
            raise InvalidArgumentError(f"sample_num must be a whole number >= 1, got {sample_num!r}")
        if warmup_num < 0:
            raise InvalidArgumentError(f"warmup_num must be a whole number >= 0, got {warmup_num!r}")
        torch_device = torch.device(device)
        model.to(torch_device)
        data = torch.rand(tuple(model_input_size), device=torch_device)
        timings: list[float] = []
        with _eval_mode(model), torch.no_grad():
            for _ in range(warmup_num):
                model(data)
            for _ in range(sample_num):
                _synchronize(torch_device)
                start = time.perf_counter()
                model(data)
                _synchronize(torch_device)
                timings.append(time.perf_counter() - start)
        return statistics.median(timings)
