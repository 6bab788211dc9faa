"""The contract between legodnn and a task: how to run, score and measure a model.

legodnn never assumes what a batch looks like or what "accuracy" means for a task;
every offline and online step goes through these six methods, so supporting a new
task (or an unusual model) means subclassing this class, or ``CommonModelManager``.
The method names and arguments are those of the original LegoDNN, so existing
managers keep working.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, Union

import torch
from torch import nn

__all__ = ["AbstractModelManager", "Device", "MetricAccumulator"]

Device = Union[str, torch.device]


class MetricAccumulator(Protocol):
    """Scores a model batch by batch: ``update`` with each batch's outputs, then ``compute``."""

    def update(self, outputs: Any, batch_data: Sequence[Any]) -> None: ...

    def compute(self) -> float: ...


class AbstractModelManager(abc.ABC):
    """Everything legodnn needs to know about running and measuring one kind of model.

    Units: accuracy as a fraction in [0, 1] (or the task's own metric), size in bytes,
    FLOPs as 2 x multiply-adds, latency in seconds.
    """

    #: the name of what ``get_model_acc`` returns (e.g. "accuracy", "mAP@0.5", "mIoU")
    metric_name: str = "accuracy"

    def metric_accumulator(self) -> MetricAccumulator:
        """A fresh accumulator for the task's metric, fed the outputs of
        ``forward_to_gen_mid_data`` batch by batch.

        Optional: it lets the block profiler score every candidate block in one pass over
        the test set, reusing the teacher's activations. Managers without one are
        profiled with a full ``get_model_acc`` pass per candidate.
        """
        raise NotImplementedError

    @abc.abstractmethod
    def forward_to_gen_mid_data(
        self, model: nn.Module, batch_data: Sequence[Any], device: Device
    ) -> Any:
        """Run ``model`` on one batch so that hooks can capture intermediate tensors.

        ``batch_data`` is one item of the task's data loader, typically ``(data, target)``.
        Block retraining registers hooks on the teacher and calls this once per batch.
        """

    def forward_for_training(self, model: nn.Module, batch_data: Sequence[Any], device: Device) -> Any:
        """Run ``model`` on one batch with autograd on, in the mode the model is in.

        Composition-aware retraining compares this output with the teacher's output from
        ``forward_to_gen_mid_data`` and backpropagates through it. The default feeds
        ``batch_data[0]``; a task whose batches look different overrides it, as it does
        ``forward_to_gen_mid_data``.
        """
        data = batch_data[0] if isinstance(batch_data, (list, tuple)) else batch_data
        return model(data.to(device))

    @abc.abstractmethod
    def dummy_forward_to_gen_mid_data(
        self, model: nn.Module, model_input_size: Sequence[int], device: Device
    ) -> Any:
        """Run ``model`` on random input of shape ``model_input_size``.

        Used where only shapes matter (e.g. recording each block's input shape for
        latency profiling), so no data set is needed.
        """

    @abc.abstractmethod
    def get_model_acc(self, model: nn.Module, test_loader: Iterable[Any], device: Device) -> float:
        """Return the model's metric on ``test_loader``; higher is better."""

    @abc.abstractmethod
    def get_model_size(self, model: nn.Module) -> int:
        """Return the memory the model's weights occupy, in bytes."""

    @abc.abstractmethod
    def get_model_flops_and_param(
        self, model: nn.Module, model_input_size: Sequence[int]
    ) -> tuple[int, int]:
        """Return ``(FLOPs, number of parameters)`` for one input of ``model_input_size``."""

    @abc.abstractmethod
    def get_model_latency(
        self,
        model: nn.Module,
        sample_num: int,
        model_input_size: Sequence[int],
        device: Device,
    ) -> float:
        """Return the model's inference latency in seconds, measured over ``sample_num`` runs."""
