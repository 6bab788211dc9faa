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
from typing import Any, Union

import torch
from torch import nn

__all__ = ["AbstractModelManager", "Device"]

Device = Union[str, torch.device]


class AbstractModelManager(abc.ABC):
    """Everything legodnn needs to know about running and measuring one kind of model.

    Units: accuracy as a fraction in [0, 1] (or the task's own metric), size in bytes,
    FLOPs as 2 x multiply-adds, latency in seconds.
    """

    @abc.abstractmethod
    def forward_to_gen_mid_data(
        self, model: nn.Module, batch_data: Sequence[Any], device: Device
    ) -> Any:
        """Run ``model`` on one batch so that hooks can capture intermediate tensors.

        ``batch_data`` is one item of the task's data loader, typically ``(data, target)``.
        Block retraining registers hooks on the teacher and calls this once per batch.
        """

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
