"""``cnnserve export-repo``: a Triton / KServe model repository from the exported ONNX files in the store.

Layout (Triton's, which KServe's Triton runtime serves as is)::

    DIR/<model>/config.pbtxt
    DIR/<model>/1/model.onnx          (plus any external-data files, copied beside it)
    DIR/<model>/labels.txt            (classifiers: Triton's classification extension names the top classes)

The ONNX files are the very ones the BentoML service runs, pre- and post-processing included in the graph, so Triton
gives the same numbers. ``config.pbtxt`` comes from :func:`cnnserve.service.triton.model_config`, the function the
service answers ``GET /v2/models/{name}/config`` with, fed the file's own inputs and outputs as onnxruntime reads
them (the rules — batching, ``FORMAT_NCHW`` on image inputs, scalars, labels — are in its module). Here
``max_batch_size`` and the queue delay are the command's options rather than a served model's measured limit.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from cnnserve.service.contract import ContractError, ModelContract, TensorInfo
from cnnserve.service.errors import ModelNotFound
from cnnserve.service.store import find_entry, list_entries
from cnnserve.service.triton import LABELS_FILE, config_pbtxt, label_output, model_config

__all__ = ["export_repository"]


def _tensor(arg) -> TensorInfo:
    return TensorInfo(name=arg.name, type=arg.type, shape=tuple(arg.shape))


def _export_one(tag: str, directory: Path, *, max_batch_size: int, max_queue_delay_us: int) -> Path:
    import onnxruntime as ort

    entry = find_entry(tag)
    if entry.path is None or not entry.path.is_file():
        raise ModelNotFound(f"store entry {tag!r} is broken: {entry.error or 'its ONNX file is missing'}")
    options = ort.SessionOptions()  # only the graph's inputs and outputs are read: no optimisation to run
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(entry.path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
        raise ModelNotFound(f"store entry {tag!r} is not a loadable ONNX file: {exc}") from None
    inputs = [_tensor(a) for a in session.get_inputs()]
    outputs = [_tensor(a) for a in session.get_outputs()]
    try:
        labels = ModelContract.from_metadata(session.get_modelmeta().custom_metadata_map).labels
    except ContractError:  # not a cnnserve export: no labels to name
        labels = None

    model_dir = directory / entry.name
    if model_dir.exists():
        shutil.rmtree(model_dir)
    (model_dir / "1").mkdir(parents=True)
    shutil.copy2(entry.path, model_dir / "1" / "model.onnx")
    for extra in entry.path.parent.glob(f"{entry.path.name}.data*"):  # external data keeps its recorded name
        shutil.copy2(extra, model_dir / "1" / extra.name)
    labelled = label_output(outputs, labels)
    if labelled is not None:
        (model_dir / LABELS_FILE).write_text("".join(f"{label}\n" for label in labels))
    config = model_config(
        entry.name,
        inputs,
        outputs,
        max_batch_size=max_batch_size,
        max_queue_delay_us=max_queue_delay_us,
        label_output=labelled,
    )
    (model_dir / "config.pbtxt").write_text(config_pbtxt(config))
    return model_dir


def export_repository(
    directory: Path, tags: list[str] | None = None, *, max_batch_size: int = 16, max_queue_delay_us: int = 1000
) -> list[Path]:
    """Write one model folder per tag (default: every cnnserve model in the store); returns the folders."""
    if not tags:
        tags = [entry.tag for entry in list_entries()]
        if not tags:
            raise ModelNotFound("the model store has no cnnserve models; export some with `cnnserve export`")
    directory.mkdir(parents=True, exist_ok=True)
    return [
        _export_one(tag, directory, max_batch_size=max_batch_size, max_queue_delay_us=max_queue_delay_us)
        for tag in tags
    ]
