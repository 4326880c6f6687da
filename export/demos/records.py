"""The training record a demo writes beside its weights (``models/weights/<model>.json``).

The record is committed with the weights, so it holds only what a rerun reproduces — data, split, recipe, seed and
the held-out metrics. How long this run took depends on the machine and its load: it goes to the report that
``cnnserve train`` prints (and ``--report FILE``), never into the sidecar, so retraining leaves the checkout clean.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["RUN_ONLY_KEYS", "write_record"]

# Keys that describe this run rather than the weights: reported, never written to the sidecar.
RUN_ONLY_KEYS = ("train_seconds", "seconds")


def write_record(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Write the reproducible part of ``record`` to ``path``; return the whole record (the run's report)."""
    sidecar = {k: v for k, v in record.items() if k not in RUN_ONLY_KEYS}
    path.write_text(json.dumps(sidecar, indent=2) + "\n")
    return record
