"""The served models by name, and which one answers a request.

Both tiers' API side and the one-tier service hold one :class:`Catalog` of :class:`~service.runtime.runner.Runner`
objects; the routes ask it for the runner of a request (:meth:`Catalog.pick`) and never look at a model's task
themselves.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from .errors import BadInput, ModelNotFound
from .runtime.model import ModelInfo
from .runtime.runner import Runner
from .tasks import Task

__all__ = ["Catalog"]


class Catalog:
    def __init__(self, runners: Mapping[str, Runner] | None = None) -> None:
        self.runners: dict[str, Runner] = dict(runners or {})

    def __iter__(self) -> Iterator[ModelInfo]:
        return (runner.info for runner in self.runners.values())

    def __len__(self) -> int:
        return len(self.runners)

    def get(self, name: str) -> Runner | None:
        return self.runners.get(name)

    @property
    def any_ready(self) -> bool:
        return any(info.ready for info in self)

    def pick(self, task: Task, name: str | None) -> Runner:
        """The named model (404 unknown, 503 not ready, 400 a model of another task) or, with no name, the first
        ready model of the task's model tasks, in the task's order (/segment: semantic models, then instance)."""
        wanted = " or ".join(task.serves)
        if not name:
            for model_task in task.serves:
                for runner in self.runners.values():
                    if runner.info.task == model_task and runner.info.ready:
                        return runner
            raise ModelNotFound(f"no {wanted} model is loaded; export one with `cnnserve export` and restart")
        runner = self.runners.get(name)
        if runner is None:
            known = ", ".join(self.runners) or "none"
            raise ModelNotFound(f"model {name!r} is not served here; served models: {known}")
        runner.info.require_ready()
        if runner.info.task not in task.serves:
            raise BadInput(f"model {name!r} is a {runner.info.task} model; this route needs a {wanted} model")
        return runner

    def close(self) -> None:
        for runner in self.runners.values():
            runner.close()
