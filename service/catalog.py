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


def _a(noun: str) -> str:
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


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

    def readiness(self) -> str | None:
        """Why the service is not ready (no model is ready: with none, there is nothing a request could get but a
        503), or None when it is. ``/readyz`` and ``/v2/health/ready`` both answer from this one rule."""
        if self.any_ready:
            return None
        if not self.runners:
            return "no model is served: the model store has none; export some with `cnnserve export --defaults`"
        problems = "; ".join(f"{info.name}: {info.error or 'not loaded'}" for info in self)
        return f"no model is ready ({problems}); GET /models has the details"

    def default_model(self, task: Task) -> str | None:
        """The model that answers ``task``'s requests that name none, fixed by what is served — never by which
        model was exported last: the default set's model of the endpoint (``Task.default_model``) when it is
        served; otherwise the first served model of the endpoint's model tasks, in the task's order (/segment:
        semantic, then instance) and then in the served order (``CNNSERVE_MODELS`` as written, else by name)."""
        if task.default_model in self.runners:
            return task.default_model
        for model_task in task.serves:
            for name, runner in self.runners.items():
                if runner.info.task == model_task:
                    return name
        return None

    def pick(self, task: Task, name: str | None) -> Runner:
        """The named model, or with no name the endpoint's :meth:`default_model` (404 unknown, 503 not ready,
        400 a model of another task)."""
        wanted = " or ".join(task.serves)
        if not name:
            name = self.default_model(task)
            if name is None:
                raise ModelNotFound(f"no {wanted} model is served; export one with `cnnserve export` and restart")
        runner = self.runners.get(name)
        if runner is None:
            known = ", ".join(self.runners) or "none"
            raise ModelNotFound(f"model {name!r} is not served here; served models: {known}")
        runner.info.require_ready()
        if runner.info.task not in task.serves:
            raise BadInput(f"model {name!r} is {_a(runner.info.task)} model; {task.route} needs {_a(wanted)} model")
        return runner

    def close(self) -> None:
        for runner in self.runners.values():
            runner.close()
