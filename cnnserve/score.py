"""``cnnserve score``: batch scoring of image files into JSONL with the service's own files and code.

Image answers (semantic masks, overlays, instance masks, denoised images, heat maps) are written as PNG files in a
``<output stem>_files/`` folder beside the JSONL and referenced by path instead of inlined as base64.

Same ONNX file (from the store or a path), same decoding, pre-processing and answer-building code as the HTTP
service, so a JSONL line equals the HTTP answer for the same image. A file that cannot be read gets an
``{"path", "error"}`` line and the run goes on; ``--resume`` skips paths already in the output, so a killed run
loses nothing and duplicates nothing (each line is flushed as soon as its batch is done).
"""

from __future__ import annotations

import base64
import glob
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from service.answers import AnswerOptions, answer_for, denoised_image
from service.codecs import png_bytes
from service.errors import ServeError
from service.imaging import decode_image, preprocess
from service.runtime import LoadedModel, load_model, select_providers
from service.store import resolve_model_file

__all__ = ["IMAGE_SUFFIXES", "expand_inputs", "already_scored", "score_files"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def expand_inputs(inputs: Iterable[str]) -> list[str]:
    """Files, folders (recursive, image suffixes only) and globs → a sorted, de-duplicated list of paths."""
    found: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += [str(p) for p in sorted(path.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
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


def _same_shape_groups(tensors: list[np.ndarray]) -> list[list[int]]:
    """Indices of tensors that can share one batch (models with dynamic input sizes get varied shapes)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, tensor in enumerate(tensors):
        groups.setdefault(tensor.shape, []).append(i)
    return list(groups.values())


_PNG_FIELDS = ("mask", "overlay", "heatmap")


def _write_png(data: bytes, files: Path, source: str, kind: str) -> str:
    files.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(source.encode()).hexdigest()[:10]
    target = files / f"{Path(source).stem}-{digest}.{kind}.png"
    target.write_bytes(data)
    return str(target)


def _answer(
    model: LoadedModel,
    outputs: dict[str, np.ndarray],
    upload: Image.Image,
    tensor: np.ndarray,
    options: AnswerOptions,
    files: Path,
    source: str,
) -> dict:
    """The HTTP answer for one image, with every PNG written to a file and referenced by its path."""
    if model.task == "autoencoder":  # both of its answers: the anomaly score and the denoised image
        answer = answer_for(model, outputs, upload=upload, tensor=tensor, route="/anomaly", options=options)
        answer["denoised"] = _write_png(
            png_bytes(denoised_image(outputs["reconstruction"], upload)), files, source, "denoised"
        )
    else:
        answer = answer_for(model, outputs, upload=upload, tensor=tensor, options=options)
    holders = [("", answer)] + [(f"instance{i}.", inst) for i, inst in enumerate(answer.get("instances", []))]
    for prefix, holder in holders:
        for field in _PNG_FIELDS:
            if field in holder:
                holder[field] = _write_png(base64.b64decode(holder[field]), files, source, prefix + field)
    return answer


def _batches(paths: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(paths), size):
        yield paths[i : i + size]


def score_files(
    model_ref: str,
    inputs: Iterable[str],
    output: Path,
    *,
    batch_size: int = 16,
    resume: bool = False,
    top_k: int = 5,
    overlay: bool = False,
    heatmap: bool = False,
    max_pixels: int = 50_000_000,
    providers: list[str] | None = None,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Score every input into ``output`` (JSONL); returns counts of scored, failed and skipped images."""
    import onnxruntime as ort

    name, path = resolve_model_file(model_ref)
    model: LoadedModel = load_model(
        name, path, providers=select_providers(providers or [], ort.get_available_providers()), warm_up=False
    )
    model.require_ready()
    pre = model.preprocess

    paths = expand_inputs(inputs)
    skipped = 0
    if resume:
        done = already_scored(output)
        skipped = sum(1 for p in paths if p in done)
        paths = [p for p in paths if p not in done]
    elif output.exists():
        output.unlink()
    if on_total:
        on_total(len(paths))
    counts = {"scored": 0, "failed": 0, "skipped": skipped}
    output.parent.mkdir(parents=True, exist_ok=True)
    files = output.with_name(output.stem + "_files")  # masks and images, referenced from the JSONL by path
    options = AnswerOptions(top_k=top_k, overlay=overlay, heatmap=heatmap)
    with output.open("a", encoding="utf-8") as out:
        for chunk in _batches(paths, batch_size):
            lines: dict[str, dict] = {}
            tensors, uploads, ok = [], [], []
            for p in chunk:
                try:
                    with open(p, "rb") as f:
                        img = decode_image(f.read(), max_pixels=max_pixels)
                    tensors.append(preprocess(img, pre))
                    uploads.append(img)
                    ok.append(p)
                except (ServeError, OSError) as exc:
                    message = exc.message if isinstance(exc, ServeError) else f"cannot read file: {exc.strerror or exc}"
                    lines[p] = {"path": p, "error": message}
            for indices in _same_shape_groups(tensors):
                outputs = model.run(np.stack([tensors[i] for i in indices]))
                for row, i in enumerate(indices):
                    one = {k: v[row] for k, v in outputs.items()}
                    lines[ok[i]] = {"path": ok[i], **_answer(model, one, uploads[i], tensors[i], options, files, ok[i])}
            for p in chunk:  # input order, one flushed line each
                out.write(json.dumps(lines[p]) + "\n")
                counts["failed" if "error" in lines[p] else "scored"] += 1
            out.flush()
            os.fsync(out.fileno())
            if progress:
                progress(len(chunk))
    return counts
