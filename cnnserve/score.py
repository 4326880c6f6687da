"""``cnnserve score``: batch scoring of image files into JSONL with the service's own files and code.

Image answers (semantic masks, overlays, instance masks, denoised images, heat maps) are written as PNG files in a
``<output stem>_files/`` folder beside the JSONL and referenced by path instead of inlined as base64.

Same ONNX file (from the store or a path), same decoding, pre-processing and answer-building code as the HTTP
service, so a JSONL line equals the HTTP answer for the same image. A file that cannot be read gets an
``{"path", "error"}`` line and the run goes on; ``--resume`` skips paths already in the output, so a killed run
loses nothing and duplicates nothing (each line is flushed as soon as its batch is done).

One :class:`Scorer` (a session + the answer options: paths → answers, in order) is the whole chain, and three engines
drive it: in this process, in ``--workers`` processes (one session each), or on Ray (``cnnserve.ray_engine``: Ray
Data ``map_batches`` over actors that each hold one session). Whatever the engine, the driver writes the answers in
input order through one sink: JSONL (a line per image, flushed per batch) or, for an output ending in ``.parquet``, a
Parquet dataset folder (one part file per batch, renamed into place when complete), so ``--resume`` works the same
way for both. Inputs are files, folders, globs, or CSV / Parquet manifests with a ``path`` column.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

from cnnserve.service.store import resolve_model_file

from .scorer import Scorer, ScorerConfig

__all__ = [
    "ENGINES",
    "IMAGE_SUFFIXES",
    "MANIFEST_SUFFIXES",
    "Scorer",
    "ScorerConfig",
    "already_scored",
    "expand_inputs",
    "open_sink",
    "read_manifest",
    "score_files",
]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
MANIFEST_SUFFIXES = {".csv", ".parquet"}
ENGINES = ("local", "ray")


def read_manifest(path: Path) -> list[str]:
    """Image paths from a CSV or Parquet manifest: its ``path`` column, else its first column."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        if not rows:
            return []
        header = [h.strip() for h in rows[0]]
        if "path" in header:
            column = header.index("path")
            return [row[column] for row in rows[1:] if len(row) > column and row[column]]
        return [row[0] for row in rows if row and row[0]]  # no header: one path per row
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    column = "path" if "path" in table.column_names else table.column_names[0]
    return [str(p) for p in table.column(column).to_pylist() if p]


def expand_inputs(inputs: Iterable[str]) -> list[str]:
    """Files, folders (recursive, image suffixes only), globs and manifests (CSV / Parquet) → a de-duplicated list
    of paths (folders and globs sorted, manifests in their own order)."""
    found: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += [str(p) for p in sorted(path.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        elif path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
            found += read_manifest(path)
        elif path.exists():
            found.append(str(path))
        else:
            matches = sorted(glob.glob(item, recursive=True))
            found += matches if matches else [item]  # a missing file still gets its error line
    return list(dict.fromkeys(found))


def already_scored(output: Path) -> set[str]:
    """Paths with a complete line in ``output``; a torn last line (killed mid-write) is dropped and rescored."""
    done: set[str] = set()
    if not output.exists():
        return done
    with output.open("rb") as f:
        lines = f.read().split(b"\n")
    good = []
    for raw in lines:
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError:
            continue
        done.add(record["path"])
        good.append(raw)
    # Rewrite without the torn line so the file stays valid JSONL.
    with output.open("wb") as f:
        f.write(b"".join(line + b"\n" for line in good))
    return done


def _batches(paths: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(paths), size):
        yield paths[i : i + size]


# --- where the records go ------------------------------------------------------------------------------------------


class JsonlSink:
    """One JSON line per image, flushed and fsynced per batch; resume drops a torn last line."""

    def __init__(self, output: Path, *, resume: bool) -> None:
        self.done = already_scored(output) if resume else set()
        if not resume and output.exists():
            output.unlink()
        output.parent.mkdir(parents=True, exist_ok=True)
        self._file = output.open("a", encoding="utf-8")

    def write(self, records: list[dict]) -> None:
        self._file.write("".join(json.dumps(r) + "\n" for r in records))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


_PARQUET_COLUMNS = ("path", "model", "error", "answer")


class ParquetSink:
    """A Parquet dataset folder: one ``part-NNNNNN.parquet`` per batch, written to a temporary name and renamed, so
    a killed run leaves only complete parts. Columns: ``path``, ``model``, ``error`` and ``answer`` (the rest of
    the record as JSON, whose fields differ by task), plus one fixed-size list column of float32 per vector field
    (``embedding``: what vector stores load; null for a failed image). ``pyarrow.parquet.read_table(folder)`` reads
    it whole."""

    def __init__(self, output: Path, *, resume: bool, vectors: dict[str, int] | None = None) -> None:
        import pyarrow.parquet as pq

        self.output = output
        self.vectors = dict(vectors or {})  # field → its length
        if output.is_file() or (output.exists() and not resume):
            if output.is_file():
                output.unlink()
            else:
                for part in output.glob("part-*"):
                    part.unlink()
        output.mkdir(parents=True, exist_ok=True)
        for torn in output.glob("*.tmp"):
            torn.unlink()
        parts = sorted(output.glob("part-*.parquet"))
        self.done = {p for part in parts for p in pq.read_table(part, columns=["path"]).column("path").to_pylist()}
        self._next = int(parts[-1].stem.split("-")[1]) + 1 if parts else 0

    def write(self, records: list[dict]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        vectors = self.vectors
        rows = [
            {
                "path": r["path"],
                "model": r.get("model"),
                "error": r.get("error"),
                "answer": None
                if "error" in r
                else json.dumps({k: v for k, v in r.items() if k != "path" and k not in vectors}),
                **{name: r.get(name) for name in vectors},
            }
            for r in records
        ]
        columns = [(name, pa.string()) for name in _PARQUET_COLUMNS]
        columns += [(name, pa.list_(pa.float32(), length)) for name, length in vectors.items()]
        schema = pa.schema(columns)
        target = self.output / f"part-{self._next:06d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), target.with_suffix(".tmp"))
        os.replace(target.with_suffix(".tmp"), target)
        self._next += 1

    def close(self) -> None:
        pass


def open_sink(output: Path, *, resume: bool, vectors: dict[str, int] | None = None) -> JsonlSink | ParquetSink:
    """JSONL, or for ``*.parquet`` a Parquet folder with a fixed-size list column per entry of ``vectors``."""
    if output.suffix == ".parquet":
        return ParquetSink(output, resume=resume, vectors=vectors)
    return JsonlSink(output, resume=resume)


def read_records(output: Path) -> list[dict]:
    """The records of a finished run, from either sink, in the order written."""
    if output.suffix != ".parquet":
        return [json.loads(line) for line in output.read_text().splitlines() if line.strip()]
    import pyarrow.parquet as pq

    records = []
    for part in sorted(output.glob("part-*.parquet")):
        for row in pq.read_table(part).to_pylist():
            answer = json.loads(row["answer"]) if row["answer"] else {"error": row["error"]}
            vectors = {k: v for k, v in row.items() if k not in _PARQUET_COLUMNS and v is not None}
            records.append({"path": row["path"], **answer, **vectors})
    return records


# --- engines: each yields lists of records in input order ----------------------------------------------------------

_worker_scorer: Scorer | None = None


def _init_worker(config: ScorerConfig) -> None:
    global _worker_scorer
    _worker_scorer = Scorer(config)


def _score_in_worker(paths: list[str]) -> list[dict]:
    assert _worker_scorer is not None
    return _worker_scorer.score(paths)


def _worker_chunks(config: ScorerConfig, paths: list[str], batch_size: int, workers: int) -> Iterator[list[dict]]:
    # Fresh interpreters (spawn): onnxruntime's thread pools do not survive fork. At most 2 batches per worker in
    # flight, taken in order, so memory stays bounded and the output order is the input order.
    config = replace(config, processes=workers)
    with ProcessPoolExecutor(
        workers, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(config,)
    ) as ex:
        pending: list[Future] = []
        for chunk in _batches(paths, batch_size):
            pending.append(ex.submit(_score_in_worker, chunk))
            if len(pending) >= 2 * workers:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


def score_files(
    model_ref: str,
    inputs: Iterable[str],
    output: Path,
    *,
    engine: str = "local",
    workers: int = 1,
    ray_address: str | None = None,
    batch_size: int = 16,
    resume: bool = False,
    top_k: int = 5,
    overlay: bool = False,
    heatmap: bool = False,
    max_pixels: int = 50_000_000,
    providers: list[str] | None = None,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    tasks: tuple[str, ...] = (),
    jpeg_draft: float = 1.0,
) -> dict[str, int]:
    """Score every input into ``output`` (JSONL, or a Parquet folder for ``*.parquet``); returns counts of scored,
    failed and skipped images. ``tasks`` names the answers each record holds (``("embed",)`` for embeddings; by
    default the model's usual answers). ``engine="ray"`` runs on the Ray cluster at ``ray_address`` (default: a
    local one) with ``workers`` actors; ``engine="local"`` in ``workers`` processes."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    name, path = resolve_model_file(model_ref)
    config = ScorerConfig(
        name=name,
        model_path=str(path),
        files=str(output.with_name(output.stem + "_files")),  # masks and images, referenced from the output by path
        providers=tuple(providers or ()),
        top_k=top_k,
        overlay=overlay,
        heatmap=heatmap,
        max_pixels=max_pixels,
        tasks=tuple(tasks),
        jpeg_draft=jpeg_draft,
    )
    scorer: Scorer | None = Scorer(config)  # a broken model fails here, with the service's message
    vectors = scorer.vector_lengths()
    if engine == "ray" or workers > 1:
        scorer = None  # checked; each worker or actor builds its own

    def chunks_of(paths: list[str]) -> Iterator[list[dict]]:
        if engine == "ray":
            from .ray_engine import ray_chunks

            return ray_chunks(config, paths, batch_size, workers, address=ray_address)
        if scorer is None:
            return _worker_chunks(config, paths, batch_size, workers)
        return (scorer.score(chunk) for chunk in _batches(paths, batch_size))

    paths = expand_inputs(inputs)
    sink = open_sink(output, resume=resume, vectors=vectors)
    skipped = sum(1 for p in paths if p in sink.done)
    paths = [p for p in paths if p not in sink.done]
    if on_total:
        on_total(len(paths))
    counts = {"scored": 0, "failed": 0, "skipped": skipped}
    try:
        for records in chunks_of(paths) if paths else ():
            sink.write(records)
            for record in records:
                counts["failed" if "error" in record else "scored"] += 1
            if progress:
                progress(len(records))
    finally:
        sink.close()
    return counts
