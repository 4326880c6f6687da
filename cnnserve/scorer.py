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

from cnnserve.service.errors import BadInput, ServeError
from cnnserve.service.runtime.model import OnnxModel, load_model
from cnnserve.service.runtime.sessions import SessionConfig, select_providers
from cnnserve.service.settings import get_settings
from cnnserve.service.tasks import DecodeLimits, ImageAnswer, Inputs, Task, tasks_serving

__all__ = ["Scorer", "ScorerConfig", "scored_tasks"]


def _same_shape_groups(inputs: list[Inputs]) -> list[list[int]]:
    """Indices of requests that can share one batch (models with dynamic input sizes get varied shapes)."""
    groups: dict[tuple, list[int]] = {}
    for i, one in enumerate(inputs):
        key = (one.images.shape, tuple((k, v.shape) for k, v in sorted(one.rows.items())))
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def scored_tasks(model_task: str, names: tuple[str, ...] = ()) -> list[Task]:
    """The tasks whose answers a record holds: ``names`` (each must serve the model), else every task serving the
    model that is scored by default (an autoencoder: anomaly and denoise; embeddings only when asked for)."""
    serving = tasks_serving(model_task)
    if names:
        known = {task.name: task for task in serving}
        unknown = [name for name in names if name not in known]
        if unknown:
            raise BadInput(
                f"task {', '.join(unknown)} does not answer for {model_task} models; "
                f"choose from {', '.join(known) or 'none'}"
            )
        tasks = [known[name] for name in dict.fromkeys(names)]
    else:
        tasks = [task for task in serving if task.scored_by_default]
    if not tasks:
        raise BadInput(f"no task scores images with a {model_task} model")
    takes_images = [task for task in tasks if task.files and task.files[0].name == "image"]
    if len(takes_images) != len(tasks):
        raise BadInput(f"{', '.join(t.name for t in tasks if t not in takes_images)} takes no image files to score")
    return tasks


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
    tasks: list[Task], name: str, model: OnnxModel, outputs: dict, inputs: Inputs, options: list, files: Path,
    source: str,
) -> dict:  # fmt: skip
    """The HTTP answers of the scored tasks (an autoencoder: its anomaly score and its denoised image), merged into
    one record, with every image written to a file and referenced by its path."""
    record: dict = {}
    contract = model.contract
    for task, task_options in zip(tasks, options, strict=True):
        answer = task.respond(name, contract, outputs, inputs, task_options)
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
    tasks: tuple[str, ...] = ()  # the answers each record holds (task names); () = the model's default ones
    jpeg_draft: float = 1.0


class Scorer:
    """One onnxruntime session and the answer options: a list of image paths → one record per path, in order.

    A record is ``{"path", …the HTTP answer…}`` or ``{"path", "error"}`` for a file that cannot be read. Images of
    one shape share one ``run`` (models with dynamic input sizes get several groups). The request hooks are the
    HTTP path's (:meth:`Task.decode`, :meth:`Task.prepare`, :meth:`Task.respond`); the scored tasks of one model
    share its inputs, so the first task's hooks make them."""

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
        self.tasks = scored_tasks(contract.task, config.tasks)
        fields = {"top_k": config.top_k, "overlay": config.overlay, "heatmap": config.heatmap}
        self.options = [task.parse_options(fields) for task in self.tasks]
        for task, options in zip(self.tasks, self.options, strict=True):
            task.check(contract, options)
        self.files = Path(config.files)

    def vector_lengths(self) -> dict[str, int]:
        """The scored tasks' vector fields (named as the graph outputs they come from) → their lengths."""
        outputs = {o.name: o.dims for o in self.model.info.outputs}
        return {name: outputs[name][-1] for task in self.tasks for name in task.vector_fields}

    def score(self, paths: list[str]) -> list[dict]:
        model, contract = self.model, self.model.contract
        first, limits = self.tasks[0], DecodeLimits(self.config.max_pixels, self.config.jpeg_draft)
        records: dict[str, dict] = {}
        inputs: list[Inputs] = []
        ok: list[str] = []
        for p in paths:
            try:
                with open(p, "rb") as f:
                    uploads = first.decode(contract, {"image": f.read()}, limits)
                inputs.append(first.prepare(contract, uploads, self.options[0]))
                ok.append(p)
            except (ServeError, OSError) as exc:
                message = exc.message if isinstance(exc, ServeError) else f"cannot read file: {exc.strerror or exc}"
                records[p] = {"path": p, "error": message}
        for indices in _same_shape_groups(inputs):
            group = [inputs[i] for i in indices]
            rows = {name: np.concatenate([one.rows[name] for one in group]) for name in group[0].rows}
            outputs = model.run(np.concatenate([one.images for one in group]), rows=rows)
            for row, i in enumerate(indices):
                one = {k: v[row : row + 1] for k, v in outputs.items()}
                answer = _record(self.tasks, self.config.name, model, one, inputs[i], self.options, self.files, ok[i])
                records[ok[i]] = {"path": ok[i], **answer}
        return [records[p] for p in paths]
