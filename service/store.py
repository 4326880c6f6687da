"""Finding exported models in the BentoML model store (``BENTOML_HOME``), torch-free.

``cnnserve export`` saves each ONNX file as a store entry labelled ``cnnserve=onnx`` with the file's name in its
metadata; this module turns store tags into file paths for the service and the batch scorer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import bentoml
from bentoml.exceptions import NotFound

from .errors import ModelNotFound

__all__ = ["StoreEntry", "STORE_LABEL", "find_entry", "list_entries", "resolve_model_file", "served_entries"]

STORE_LABEL = "cnnserve"


@dataclass(frozen=True)
class StoreEntry:
    tag: str  # name:version
    name: str
    path: Path | None  # the ONNX file, None when the entry is broken
    error: str | None = None
    weights_sha256: str | None = None  # of the demo weights it was exported from (none for other weights)


def _entry(model: bentoml.Model) -> StoreEntry:
    filename = model.info.metadata.get("onnx_file")
    if not filename:
        return StoreEntry(str(model.tag), model.tag.name, None, "store entry has no onnx_file metadata")
    digest = model.info.metadata.get("weights_sha256")
    return StoreEntry(str(model.tag), model.tag.name, Path(model.path_of(filename)), weights_sha256=digest)


def find_entry(tag: str) -> StoreEntry:
    """``lenet5`` (latest version) or ``lenet5:version`` → its entry; :class:`ModelNotFound` otherwise."""
    try:
        model = bentoml.models.get(tag)
    except (NotFound, ValueError) as exc:
        raise ModelNotFound(f"model {tag!r} is not in the model store; export it with `cnnserve export`") from exc
    if model.info.labels.get(STORE_LABEL) != "onnx":
        raise ModelNotFound(f"store entry {tag!r} was not made by `cnnserve export`")
    return _entry(model)


def list_entries() -> list[StoreEntry]:
    """The newest version of every cnnserve model in the store, sorted by name (a stable order: a new export does
    not move the others)."""
    newest: dict[str, bentoml.Model] = {}
    for model in bentoml.models.list():
        if model.info.labels.get(STORE_LABEL) != "onnx":
            continue
        seen = newest.get(model.tag.name)
        if seen is None or model.info.creation_time > seen.info.creation_time:
            newest[model.tag.name] = model
    return [_entry(newest[name]) for name in sorted(newest)]


def resolve_model_file(tag_or_path: str) -> tuple[str, Path]:
    """A store tag or a path to an ``.onnx`` file → (display name, file path)."""
    candidate = Path(tag_or_path)
    if candidate.suffix == ".onnx":
        if not candidate.is_file():
            raise ModelNotFound(f"ONNX file {tag_or_path} does not exist")
        return candidate.stem, candidate
    entry = find_entry(tag_or_path)
    if entry.path is None:
        raise ModelNotFound(f"store entry {tag_or_path!r} is broken: {entry.error}")
    return entry.name, entry.path


def served_entries(tags: list[str]) -> list[StoreEntry]:
    """The configured tags, or every cnnserve model in the store; an unknown tag becomes a broken entry (logged by
    the loader, and shown not ready in ``/models``) instead of stopping the others."""
    if not tags:
        return list_entries()
    entries = []
    for tag in tags:
        try:
            entries.append(find_entry(tag))
        except ModelNotFound as exc:
            entries.append(StoreEntry(tag, tag.split(":")[0], None, exc.message))
    return entries
