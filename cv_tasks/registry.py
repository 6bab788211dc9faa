"""Name -> builder registries for the cv_tasks models, modelled on torchvision's ``_api.py``.

Tests, demos and benchmarks iterate over ``list_models()`` instead of hard-coding
model lists, so a newly registered model is covered everywhere at once. Registries fail
loudly: registering a taken name or asking for an unknown one raises ``ValueError``.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from torch import nn

__all__ = [
    "Registry",
    "ModelInfo",
    "MODELS",
    "register_model",
    "get_model",
    "get_model_builder",
    "get_model_info",
    "list_models",
    "MODEL_MANAGERS",
    "register_model_manager",
    "get_model_manager",
    "list_tasks",
]

T = TypeVar("T")
BuilderT = TypeVar("BuilderT", bound=Callable[..., nn.Module])


class Registry(Generic[T]):
    """A table of named entries that refuses duplicates and unknown names.

    Generic so that the per-task model managers can have a registry of their own.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name``; raises ``ValueError`` if the name is taken."""
        if name in self._entries:
            raise ValueError(f"a {self.kind} is already registered under the name {name!r}")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        """Return the entry for ``name``; raises ``ValueError`` listing the known names."""
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise ValueError(f"unknown {self.kind} {name!r}; registered: {known}") from None

    def names(self, include: str | None = None) -> list[str]:
        """Sorted names, optionally filtered by the shell-style pattern ``include``."""
        names = sorted(self._entries)
        if include is not None:
            names = fnmatch.filter(names, include)
        return names

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True)
class ModelInfo:
    """A registered model: its builder and what a caller needs to run it.

    ``input_size`` is the model's natural input shape with batch size 1, e.g.
    ``(1, 3, 32, 32)``; it is the ``model_input_size`` the legodnn API asks for.
    """

    name: str
    builder: Callable[..., nn.Module]
    task: str | None = None
    input_size: tuple[int, ...] | None = None


MODELS: Registry[ModelInfo] = Registry("model")


def register_model(
    name: str | None = None,
    *,
    task: str | None = None,
    input_size: tuple[int, ...] | None = None,
) -> Callable[[BuilderT], BuilderT]:
    """Decorator that registers a model builder under ``name`` (default: its ``__name__``).

    Raises ``ValueError`` if the name is already taken. The builder is returned
    unchanged, so it stays importable and callable directly.
    """

    def wrapper(fn: BuilderT) -> BuilderT:
        key = fn.__name__ if name is None else name
        size = None if input_size is None else tuple(input_size)
        MODELS.register(key, ModelInfo(name=key, builder=fn, task=task, input_size=size))
        return fn

    return wrapper


def list_models(include: str | None = None) -> list[str]:
    """Sorted names of the registered models, filtered by the ``fnmatch`` pattern ``include``."""
    return MODELS.names(include)


def get_model_info(name: str) -> ModelInfo:
    """The registry entry of model ``name``; raises ``ValueError`` if unknown."""
    return MODELS.get(name)


def get_model_builder(name: str) -> Callable[..., nn.Module]:
    """The builder function of model ``name``; raises ``ValueError`` if unknown."""
    return MODELS.get(name).builder


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Build model ``name``, passing ``kwargs`` (e.g. ``num_classes``) to its builder."""
    return get_model_builder(name)(**kwargs)


#: task name -> model manager class (e.g. "object_detection" -> DetectionModelManager)
MODEL_MANAGERS: Registry[Callable[..., Any]] = Registry("model manager")


def register_model_manager(task: str) -> Callable[[T], T]:
    """Class decorator that registers a task's model manager under the task's name."""

    def wrapper(cls: T) -> T:
        MODEL_MANAGERS.register(task, cls)  # type: ignore[arg-type]
        return cls

    return wrapper


def get_model_manager(task: str, **kwargs: Any) -> Any:
    """A new model manager for ``task`` (``kwargs`` go to its constructor).

    The task's package is imported on first use, so its optional dependencies
    (pycocotools, OpenCV) are needed only by those who use it.
    """
    if task not in MODEL_MANAGERS:
        import importlib

        try:
            importlib.import_module(f"cv_tasks.{task}.model_manager")
        except ModuleNotFoundError as exc:
            if exc.name != f"cv_tasks.{task}.model_manager" and exc.name != f"cv_tasks.{task}":
                raise
    return MODEL_MANAGERS.get(task)(**kwargs)


def list_tasks() -> list[str]:
    """Sorted names of the tasks that have registered models or a model manager.

    Every name is one that :func:`get_model_manager` accepts (it imports the task's
    package on first use).
    """
    tasks = {info.task for info in (MODELS.get(n) for n in MODELS.names()) if info.task}
    return sorted(tasks | set(MODEL_MANAGERS.names()))
