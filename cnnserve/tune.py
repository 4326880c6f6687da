"""``cnnserve tune``: measure each model's batch-cost curve here, keep it, and say which batch limit follows.

The service reads what this writes (``~/.cache/cnnserve/batching.json``, or ``CNNSERVE_BATCH_PROFILES``) the next
time it loads the same file on the same device with the same threads; see ``service/batch_tuning.py`` for the
rule. Run it where the service runs (same machine, same ``CNNSERVE_*`` settings), with nothing else busy: the
curve is only as good as the quiet it was measured in. ``--defaults FILE`` also merges the curves into a family
defaults file (how ``service/runtime/batching_defaults.json`` was made).
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["tune"]


def tune(
    models: list[str],
    *,
    budget_ms: float | None = None,
    tolerance: float | None = None,
    profiles_path: Path | None = None,
    defaults_out: Path | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Measure ``models`` (store tags or ``.onnx`` paths; none = every cnnserve model in the store) one at a time;
    returns one record per model: the stored curve plus the limit chosen from it."""
    import onnxruntime as ort

    from cnnserve.service.runtime.model import load_model
    from cnnserve.service.runtime.policy import ProfileStore, curve_of, limit_from_curve
    from cnnserve.service.runtime.sessions import select_providers
    from cnnserve.service.runtime.tuning import tune_model
    from cnnserve.service.settings import get_settings
    from cnnserve.service.store import list_entries, resolve_model_file

    updates = {"batch_profiles": str(profiles_path) if profiles_path else None, "batch_budget_ms": budget_ms,
               "batch_tolerance": tolerance}  # fmt: skip
    settings = get_settings().model_copy(update={k: v for k, v in updates.items() if v is not None})
    store = ProfileStore(Path(settings.batch_profiles) if settings.batch_profiles else None)
    providers = select_providers(settings.providers, ort.get_available_providers())
    targets = models or [entry.tag for entry in list_entries()]
    if not targets:
        raise LookupError("no models to tune: the store has none; run `cnnserve export --defaults` or name files")
    records = []
    for target in targets:
        name, path = resolve_model_file(target)
        model = load_model(
            name,
            path,
            providers=providers,
            intra_op_threads=settings.intra_op_threads,
            device_id=settings.device_id,
            io_binding=settings.io_binding,
            strict_providers=True,  # a curve measured on a CPU fallback would be filed under the wrong device
        )
        contract = model.contract  # a file that does not load: its reason, as an error
        log(f"== {name} ({contract.precision}, {model.info.providers[0]})")
        entry = tune_model(model, settings, profiles=store, log=log)
        limit = limit_from_curve(
            curve_of(entry),
            source="measured",
            budget_ms=settings.batch_budget_ms,
            tolerance=settings.batch_tolerance,
            max_latency_ms=settings.max_latency_ms,
        )
        log(
            f"   batch limit {limit.max_batch_size} (budget {settings.batch_budget_ms:g} ms, tolerance "
            f"{settings.batch_tolerance:g}); a request is shed after {limit.shed_after_ms:.0f} ms"
        )
        records.append({**entry, "max_batch_size": limit.max_batch_size})
        if defaults_out is not None:  # after each model: a long run cut short keeps what it measured
            _merge_defaults(defaults_out, records[-1:])
        del model
        gc.collect()  # one model's session at a time: ViT-H or VGG in fp32 are half a gigabyte each
    log(f"curves written to {store.path}" + (f"; family defaults merged into {defaults_out}" if defaults_out else ""))
    return records


def _merge_defaults(path: Path, records: list[dict[str, Any]]) -> None:
    """Family defaults are keyed by (registered model, precision, provider); a file's hash means nothing there."""
    from cnnserve.service.runtime.policy import dump_entries

    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        data = {}
    keep = ("family", "model", "precision", "provider", "device", "threads", "budget_ms", "measured_at", "curve")
    new = []
    for record in records:
        entry = {**record, "model": record.get("registered") or record["model"]}
        new.append({k: entry.get(k) for k in keep})
    key = lambda e: (e["model"], e["precision"], e["provider"])  # noqa: E731
    fresh = {key(e) for e in new}
    entries = [e for e in data.get("entries", []) if key(e) not in fresh] + new
    entries.sort(key=lambda e: (e["provider"], e["family"] or "", e["model"], e["precision"]))
    header = {  # an existing file's "about" says which machines measured it: kept
        "about": data.get("about")
        or "Batch-cost curves measured by `cnnserve tune --defaults` (service/runtime/policy.py): the batch limit of "
        "a model with no curve of its own on the serving machine comes from its own entry here, else its family's.",
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    path.write_text(dump_entries(header, "entries", entries))
