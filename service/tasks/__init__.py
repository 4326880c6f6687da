"""The task registry: every kind of answer the service gives, one class each (:class:`.base.Task`).

The HTTP routes, ``/v2``'s classification extension, the batch scorer, the page's endpoint list and the export's
quality checks iterate :func:`all_tasks`; none of them has an if/elif over task names. Adding a task is one new
module here with a :func:`register_task` class, plus its name in ``_TASK_MODULES`` (docs/architecture.md).
"""

from __future__ import annotations

import importlib

from .base import DecodeLimits, FileField, ImageAnswer, Inputs, Outputs, Task, TaskOptions

__all__ = [
    "DecodeLimits",
    "FileField",
    "ImageAnswer",
    "Inputs",
    "Outputs",
    "Task",
    "TaskOptions",
    "all_tasks",
    "get_task",
    "register_task",
    "tasks_serving",
]

_REGISTRY: dict[str, Task] = {}
# The task modules, in the order the page and /docs list them; each registers its class on import.
_TASK_MODULES = ("classify", "detect", "segment", "denoise", "anomaly", "embed", "inpaint", "generate")
_loaded = False


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: add a task; a name or route registered twice is a mistake, always."""
    for other in _REGISTRY.values():
        if other.name == cls.name or other.route == cls.route:
            raise ValueError(f"task {cls.name!r} ({cls.route}) is already registered")
    _REGISTRY[cls.name] = cls()
    return cls


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _TASK_MODULES:
            importlib.import_module(f"{__name__}.{module}")


def all_tasks() -> list[Task]:
    _ensure_loaded()
    return list(_REGISTRY.values())


def get_task(name: str) -> Task:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(_REGISTRY)}") from None


def tasks_serving(model_task: str) -> list[Task]:
    """The tasks that answer for a model of ``model_task`` (an autoencoder: denoise and anomaly)."""
    return [task for task in all_tasks() if model_task in task.serves]
