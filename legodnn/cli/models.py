"""``--model``, ``--model-kwargs`` and ``--weights``: a model named the way its users name it.

``torchvision:resnet18`` and ``timm:resnet50d`` go through those libraries' own
registries, ``cv_tasks:cifar_resnet18`` through cv_tasks'; anything else is
``package.module:function`` (a class works too), called with ``--model-kwargs``. A
prefix whose name is not in its registry falls back to the plain attribute, so
``cv_tasks:get_model`` (the first CLI's spelling) still works. Every way a model cannot
be built is a :class:`~legodnn.cli.args.UsageError` that names what was given.
Weights are read with safetensors, which never runs code from the file.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import nn

from .args import UsageError

__all__ = ["build_model", "load_weights", "default_input_size", "model_from_args", "set_threads", "block_manager_for"]


def _import(spec: str, module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name and not module_name.startswith(f"{exc.name}."):
            # the module exists but imports something missing: say that, not "no module"
            raise UsageError(f"--model {spec!r}: importing {module_name!r} failed: {exc}") from exc
        raise UsageError(
            f"--model {spec!r}: no module named {module_name!r}; install it or add its folder to PYTHONPATH") from exc
    except Exception as exc:
        raise UsageError(f"--model {spec!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc


def _registered(spec: str, prefix: str, name: str) -> Optional[Callable[..., nn.Module]]:
    """The builder of ``name`` in the registry of ``prefix``, or None (not a registry
    prefix, or a name the registry does not know: then it is a plain attribute)."""
    if prefix == "torchvision":
        models = _import(spec, "torchvision.models")
        if name in models.list_models():
            return lambda **kw: models.get_model(name, **kw)
    elif prefix == "timm":
        timm = _import(spec, "timm")
        if timm.is_model(name.split(".")[0]):  # "resnet50d" or "resnet50d.a1_in1k" (a pretrained tag)
            return lambda **kw: timm.create_model(name, **kw)
    elif prefix == "cv_tasks":
        cv_tasks = _import(spec, "cv_tasks")
        if name in cv_tasks.list_models():
            return cv_tasks.get_model_builder(name)
    return None


def build_model(spec: str, kwargs: Dict[str, Any]) -> nn.Module:
    """The model ``spec`` names, built with ``kwargs``, in eval mode."""
    module_name, _, name = spec.partition(":")
    factory = _registered(spec, module_name, name)
    if factory is None:
        module = _import(spec, module_name)
        factory = getattr(module, name, None)
        if factory is None:
            known = " (or a registered model name)" if module_name in ("torchvision", "timm", "cv_tasks") else ""
            raise UsageError(f"--model {spec!r}: module {module_name!r} has no attribute {name!r}{known}")
        if not callable(factory):
            raise UsageError(f"--model {spec!r}: {name!r} is a {type(factory).__name__}, not a function or class")
    try:
        model = factory(**kwargs)
    except Exception as exc:
        raise UsageError(
            f"--model {spec!r} with --model-kwargs {json.dumps(kwargs)} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise UsageError(f"--model {spec!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


def load_weights(model: nn.Module, path: str) -> None:
    """Load a ``.safetensors`` state dict into ``model`` (all keys, matching shapes).

    A pickled checkpoint (``.pt``) is refused rather than unpickled: loading one runs
    whatever code it names. ``cv_tasks.image_classification.train`` writes safetensors;
    ``safetensors.torch.save_file(model.state_dict(), path)`` converts any other.
    """
    from safetensors.torch import load_file

    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--weights {path!r}: no such file")
    try:
        state = load_file(str(file))
    except Exception as exc:  # safetensors' SafetensorError, an unreadable file: either way not loadable
        raise UsageError(
            f"--weights {path!r} is not a safetensors file ({exc}); legodnn never unpickles checkpoints: save "
            "them with safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')") from exc
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        lines = str(exc).strip().splitlines()
        raise UsageError(
            f"--weights {path!r} do not fit this {type(model).__name__} ({lines[-1].strip() if lines else exc}); "
            "pass the --model and --model-kwargs they were trained with") from exc


def default_input_size(spec: str, model: nn.Module) -> Tuple[int, ...]:
    """The input shape to trace ``model`` with when ``--input-size`` is not given: the one
    cv_tasks registers, timm's pretrained configuration, 224x224 for torchvision, else
    3x32x32 (the CIFAR size of the demos)."""
    prefix, _, name = spec.partition(":")
    if prefix == "cv_tasks":
        import cv_tasks

        if name in cv_tasks.list_models():
            size = cv_tasks.get_model_info(name).input_size
            if size:
                return tuple(size)
    if prefix == "timm":
        cfg = getattr(model, "pretrained_cfg", None) or {}
        if cfg.get("input_size"):
            return (1, *cfg["input_size"])
    if prefix == "torchvision":
        return (1, 3, 224, 224)
    return (1, 3, 32, 32)


def model_from_args(args: Any) -> nn.Module:
    """The model of a parsed command line, with ``--weights`` loaded when given."""
    model = build_model(args.model, args.model_kwargs)
    if getattr(args, "weights", None):
        load_weights(model, args.weights)
    return model


def set_threads(threads: Optional[int]) -> None:
    """``--threads``: set before anything is built or timed."""
    if threads is not None:
        torch.set_num_threads(threads)


def block_manager_for(blocks_dir: str, model: nn.Module, device: str, verbose: bool) -> Tuple[Any, Any, Any]:
    """(block manager, model manager, store) for a store extracted from ``model``.

    The store's manifest says how it was cut (sparsities, input size, block size
    ratio), so only ``extract`` asks for them; the block manager is then checked
    against the store at once (another model's store fails here, naming both).
    """
    from ..blockmanager.auto_block_manager import AutoBlockManager
    from ..blockmanager.store import BlockStore
    from ..model_manager.common_model_manager import CommonModelManager

    store = BlockStore(blocks_dir)
    manifest = store.manifest
    model_manager = CommonModelManager()
    block_manager = AutoBlockManager(list(manifest.block_sparsity), model, model_manager, manifest.model_input_size,
                                     manifest.compress_layer_max_ratio, device, verbose=verbose)
    block_manager.open_store(store)
    return block_manager, model_manager, store
