"""The batch scorer's chain: one model's session and answer options — a list of image paths → one record each.

Same ONNX file, same decoding, pre-processing and answers (the service's task registry) as the HTTP service, so a
record equals the HTTP answer for the same image; images in answers are written as PNG files and referenced by
path. :mod:`cnnserve.score` drives a :class:`Scorer` in this process, in worker processes or on Ray
(:mod:`cnnserve.ray_engine`).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from cnnserve.service.errors import ServeError
from cnnserve.service.imaging import decode_image, preprocess_uint8
from cnnserve.service.runtime.model import OnnxModel, load_model
from cnnserve.service.runtime.sessions import SessionConfig, select_providers
from cnnserve.service.settings import get_settings
from cnnserve.service.tasks import ImageAnswer, Task, tasks_serving

__all__ = ["Scorer", "ScorerConfig"]


def _same_shape_groups(tensors: list[np.ndarray]) -> list[list[int]]:
    """Indices of tensors that can share one batch (models with dynamic input sizes get varied shapes)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, tensor in enumerate(tensors):
        groups.setdefault(tensor.shape, []).append(i)
    return list(groups.values())


def _write_png(data: bytes, files: Path, source: str, kind: str) -> str:
    files.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(source.encode()).hexdigest()[:10]
    target = files / f"{Path(source).stem}-{digest}.{kind}.png"
    target.write_bytes(data)
    return str(target)


def _externalise(holder: dict, fields: tuple[str, ...], files: Path, source: str, prefix: str = "") -> None:
    """Base64 PNG fields of an answer (and of its nested lists of objects) → files, referenced by path."""
    for key, value in list(holder.items()):
        if key in fields and isinstance(value, str):
            holder[key] = _write_png(base64.b64decode(value), files, source, prefix + key)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    _externalise(item, fields, files, source, f"{prefix}{key.rstrip('s')}{i}.")


def _record(
    tasks: list[Task], name: str, model: OnnxModel, outputs: dict, upload: Image.Image, pixels: np.ndarray,
    options: list, files: Path, source: str,
) -> dict:  # fmt: skip
    """The HTTP answers of every task that serves the model (an autoencoder: its anomaly score and its denoised
    image), merged into one record, with every image written to a file and referenced by its path."""
    record: dict = {}
    contract = model.contract
    for task, task_options in zip(tasks, options, strict=True):
        answer = task.answer(name, contract, outputs, upload, pixels, task_options)
        if isinstance(answer, ImageAnswer):
            record[task.record_key] = _write_png(answer.png, files, source, task.record_key)
            continue
        body = answer.model_dump(exclude_none=True)
        _externalise(body, task.png_fields, files, source)
        record.update(body)
    return record


@dataclass(frozen=True)
class ScorerConfig:
    """Everything a :class:`Scorer` needs, picklable, so a worker process or a Ray actor can build its own."""

    name: str
    model_path: str
    files: str  # folder for PNG answers (masks, images), beside the output
    providers: tuple[str, ...] = ()
    top_k: int = 5
    overlay: bool = False
    heatmap: bool = False
    max_pixels: int = 50_000_000
    processes: int = 1  # scorers running side by side on one machine: each session takes its share of the cores
    threads: int = 0  # onnxruntime intra-op threads per session; 0 = the share above


class Scorer:
    """One onnxruntime session and the answer options: a list of image paths → one record per path, in order.

    A record is ``{"path", …the HTTP answer…}`` or ``{"path", "error"}`` for a file that cannot be read. Images of
    one shape share one ``run`` (models with dynamic input sizes get several groups)."""

    def __init__(self, config: ScorerConfig) -> None:
        import onnxruntime as ort

        self.config = config
        session = replace(SessionConfig.from_settings(get_settings()), processes=config.processes)
        self.model = load_model(
            config.name,
            Path(config.model_path),
            providers=select_providers(list(config.providers), ort.get_available_providers()),
            intra_op_threads=config.threads,
            session_config=session,
        )
        contract = self.model.contract  # a broken model fails here, with the service's message
        self.tasks = tasks_serving(contract.task)
        fields = {"top_k": config.top_k, "overlay": config.overlay, "heatmap": config.heatmap}
        self.options = [task.parse_options(fields) for task in self.tasks]
        for task, options in zip(self.tasks, self.options, strict=True):
            task.check(contract, options)
        self.files = Path(config.files)

    def score(self, paths: list[str]) -> list[dict]:
        model, pre = self.model, self.model.contract.preprocess
        records: dict[str, dict] = {}
        tensors, uploads, ok = [], [], []
        for p in paths:
            try:
                with open(p, "rb") as f:
                    img = decode_image(f.read(), max_pixels=self.config.max_pixels)
                tensors.append(preprocess_uint8(img, pre))
                uploads.append(img)
                ok.append(p)
            except (ServeError, OSError) as exc:
                message = exc.message if isinstance(exc, ServeError) else f"cannot read file: {exc.strerror or exc}"
                records[p] = {"path": p, "error": message}
        for indices in _same_shape_groups(tensors):
            outputs = model.run(np.stack([tensors[i] for i in indices]))
            for row, i in enumerate(indices):
                one = {k: v[row] for k, v in outputs.items()}
                answer = _record(
                    self.tasks, self.config.name, model, one, uploads[i], tensors[i], self.options, self.files, ok[i]
                )
                records[ok[i]] = {"path": ok[i], **answer}
        return [records[p] for p in paths]
