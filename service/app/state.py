"""What the routes need of the running service — its settings, metrics, catalog of models and image work — without
importing the BentoML service class (which imports the routes): the arrow points one way."""

from __future__ import annotations

from typing import Protocol

import bentoml

from ..catalog import Catalog
from ..settings import Settings
from .metrics import Metrics
from .work import ImageWork

__all__ = ["ServiceState", "current"]


class ServiceState(Protocol):
    settings: Settings
    metrics: Metrics
    catalog: Catalog
    work: ImageWork


def current() -> ServiceState:
    """The service instance of this worker process (BentoML's)."""
    return bentoml.get_current_service()
