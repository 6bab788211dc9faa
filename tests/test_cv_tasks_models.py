"""Every registered cv_tasks model: builds, runs, has gradients, and traces with torch.fx.

Parametrized over the registry, so a newly registered model is tested without
editing this file.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cv_tasks
from cv_tasks import registry
from cv_tasks.registry import Registry, get_model, get_model_info, list_models, register_model

# tasks whose models map a tensor to a tensor of a known shape; the other tasks' models
# (detectors, keypoint and anomaly models with structured outputs) are tested in their
# task's own test file
_TENSOR_TASKS = ("image_classification", "action_recognition", "semantic_segmentation")
MODEL_NAMES = [n for n in list_models() if get_model_info(n).task in _TENSOR_TASKS]
NUM_CLASSES = 7  # not a default of any builder, so a builder that ignores it fails
BATCH = 2  # > 1 so BatchNorm in train mode has a batch to normalise over

EXPECTED_MODELS = {
    "cifar_resnet18",
    "cifar_resnet34",
    "cifar_mobilenetv2",
    "cifar_vgg16",
    "cifar_densenet_tiny",
    "c3d_tiny",
    "tiny_encoder_decoder",
}


def _input(name: str) -> torch.Tensor:
    size = get_model_info(name).input_size
    assert size is not None, f"{name} does not declare its input_size"
    torch.manual_seed(0)
    return torch.rand((BATCH, *size[1:]))


def _expected_output_shape(name: str, x: torch.Tensor) -> tuple[int, ...]:
    task = get_model_info(name).task
    if task in ("image_classification", "action_recognition"):
        return (x.shape[0], NUM_CLASSES)
    if task == "semantic_segmentation":
        return (x.shape[0], NUM_CLASSES, *x.shape[2:])
    raise AssertionError(f"{name}: no expected output shape for task {task!r}")


def test_builtin_models_are_registered() -> None:
    assert EXPECTED_MODELS <= set(MODEL_NAMES)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_shape_and_finite(name: str) -> None:
    model = get_model(name, num_classes=NUM_CLASSES).eval()
    x = _input(name)
    with torch.no_grad():
        out = model(x)
    assert tuple(out.shape) == _expected_output_shape(name, x)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_parameter_gets_a_gradient(name: str) -> None:
    model = get_model(name, num_classes=NUM_CLASSES).train()
    model(_input(name)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_fx_trace_matches_eager(name: str) -> None:
    model = get_model(name, num_classes=NUM_CLASSES).eval()
    traced = torch.fx.symbolic_trace(model)
    x = _input(name)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_import_does_not_pull_in_torchvision() -> None:
    import subprocess
    import sys

    code = "import sys, cv_tasks; sys.exit('torchvision' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], env=_subprocess_env(), check=False)
    assert result.returncode == 0, "importing cv_tasks imported torchvision"


def _subprocess_env() -> dict[str, str]:
    import os
    from pathlib import Path

    env = dict(os.environ)
    root = str(Path(cv_tasks.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def test_list_models_include_pattern() -> None:
    assert list_models("cifar_resnet*") == ["cifar_resnet18", "cifar_resnet34"]
    assert list_models("no_such_model*") == []


def test_unknown_model_raises() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        get_model("no_such_model")


def test_register_model_rejects_duplicate_name(monkeypatch: pytest.MonkeyPatch) -> None:
    # A private registry, so the global one is not polluted for other tests.
    monkeypatch.setattr(registry, "MODELS", Registry("model"))

    @register_model()
    def my_net(num_classes: int = 10) -> nn.Module:
        return nn.Linear(4, num_classes)

    assert list_models() == ["my_net"]
    assert isinstance(get_model("my_net", num_classes=3), nn.Linear)
    with pytest.raises(ValueError, match="already registered"):
        register_model("my_net")(my_net)


def test_builtin_name_cannot_be_registered_again() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model("cifar_resnet18")(lambda num_classes=10: nn.Linear(1, num_classes))
    assert get_model_info("cifar_resnet18").builder is cv_tasks.get_model_builder("cifar_resnet18")


def test_every_task_lists_and_builds_its_model_manager() -> None:
    tasks = cv_tasks.list_tasks()
    assert set(tasks) == {
        "image_classification", "object_detection", "semantic_segmentation",
        "pose_estimation", "action_recognition", "anomaly_detection",
    }
    for task in tasks:
        manager = cv_tasks.get_model_manager(task)
        assert isinstance(manager.metric_name, str) and manager.metric_name
    with pytest.raises(ValueError):
        cv_tasks.get_model_manager("no_such_task")


def test_demo_support_checks_models_and_writes_results(tmp_path) -> None:
    import json

    from cv_tasks.demo_support import task_models, write_results

    assert task_models("action_recognition", ["c3d_tiny", " r3d_18 ", ""]) == ["c3d_tiny", "r3d_18"]
    with pytest.raises(ValueError, match="not a registered model of task 'pose_estimation'"):
        task_models("pose_estimation", ["c3d_tiny"])
    with pytest.raises(ValueError, match="no model given"):
        task_models("pose_estimation", [""])
    path = write_results(tmp_path, {"seconds": 1.5, "models": ["a"]})
    assert json.loads(path.read_text()) == {"seconds": 1.5, "models": ["a"]}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left
