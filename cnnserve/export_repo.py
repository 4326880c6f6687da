"""``cnnserve export-repo``: a Triton / KServe model repository from the exported ONNX files in the store.

Layout (Triton's, which KServe's Triton runtime serves as is)::

    DIR/<model>/config.pbtxt
    DIR/<model>/1/model.onnx          (plus any external-data files, copied beside it)
    DIR/<model>/labels.txt            (classifiers: Triton's classification extension names the top classes)

The ONNX files are the very ones the BentoML service runs, pre- and post-processing included in the graph, so Triton
gives the same numbers. ``config.pbtxt`` is written from the file's own inputs and outputs as onnxruntime reads them:
names, dtypes, and dims with -1 for dynamic sizes. When every input and output has a dynamic first (batch) axis the
config batches (``max_batch_size`` + ``dynamic_batching``, dims without the batch axis); a model with scalar inputs
(the detectors' score / IoU thresholds) cannot be batched by Triton, so it gets ``max_batch_size: 0`` and full dims,
and a client sends the batch axis itself. Scalars are written as ``dims: [ 1 ]`` reshaped to ``[ ]``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from cnnserve.service.errors import ModelNotFound
from cnnserve.service.store import find_entry, list_entries

__all__ = ["TRITON_DTYPES", "TensorConfig", "export_repository", "model_config"]

# onnxruntime's type strings → Triton's data types.
TRITON_DTYPES = {
    "tensor(float)": "TYPE_FP32",
    "tensor(float16)": "TYPE_FP16",
    "tensor(double)": "TYPE_FP64",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(int8)": "TYPE_INT8",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(bool)": "TYPE_BOOL",
}


@dataclass(frozen=True)
class TensorConfig:
    name: str
    data_type: str
    dims: tuple[int, ...]  # -1 for a dynamic axis

    @classmethod
    def from_ort(cls, arg) -> TensorConfig:
        if arg.type not in TRITON_DTYPES:
            raise ModelNotFound(f"tensor {arg.name!r} has type {arg.type}, which Triton's ONNX backend cannot take")
        return cls(arg.name, TRITON_DTYPES[arg.type], tuple(d if isinstance(d, int) else -1 for d in arg.shape))


def _tensor_block(tensor: TensorConfig, dims: tuple[int, ...], extra: str = "") -> str:
    shape = ", ".join(str(d) for d in dims) if dims else "1"
    reshape = "" if dims else "\n    reshape: { shape: [ ] }"
    fields = f'name: "{tensor.name}"\n    data_type: {tensor.data_type}\n    dims: [ {shape} ]{reshape}{extra}'
    return f"  {{\n    {fields}\n  }}"


def model_config(
    name: str,
    inputs: list[TensorConfig],
    outputs: list[TensorConfig],
    *,
    max_batch_size: int,
    max_queue_delay_us: int,
    label_output: str | None = None,
) -> str:
    """The text of ``config.pbtxt`` for one ONNX model."""
    tensors = inputs + outputs
    batched = max_batch_size > 0 and all(t.dims and t.dims[0] == -1 for t in tensors)
    strip = (lambda dims: dims[1:]) if batched else (lambda dims: dims)
    label = '\n    label_filename: "labels.txt"'
    lines = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size if batched else 0}",
        "input [\n" + ",\n".join(_tensor_block(t, strip(t.dims)) for t in inputs) + "\n]",
        "output [\n"
        + ",\n".join(_tensor_block(t, strip(t.dims), label if t.name == label_output else "") for t in outputs)
        + "\n]",
    ]
    if batched:
        lines.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {max_queue_delay_us}\n}}")
    lines.append("instance_group [\n  { kind: KIND_AUTO, count: 1 }\n]")
    return "\n".join(lines) + "\n"


def _export_one(tag: str, directory: Path, *, max_batch_size: int, max_queue_delay_us: int) -> Path:
    import onnxruntime as ort

    entry = find_entry(tag)
    if entry.path is None or not entry.path.is_file():
        raise ModelNotFound(f"store entry {tag!r} is broken: {entry.error or 'its ONNX file is missing'}")
    try:
        session = ort.InferenceSession(str(entry.path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
        raise ModelNotFound(f"store entry {tag!r} is not a loadable ONNX file: {exc}") from None
    inputs = [TensorConfig.from_ort(a) for a in session.get_inputs()]
    outputs = [TensorConfig.from_ort(a) for a in session.get_outputs()]
    spec = json.loads(session.get_modelmeta().custom_metadata_map.get("cnnserve.spec", "{}"))

    model_dir = directory / entry.name
    if model_dir.exists():
        shutil.rmtree(model_dir)
    (model_dir / "1").mkdir(parents=True)
    shutil.copy2(entry.path, model_dir / "1" / "model.onnx")
    for extra in entry.path.parent.glob(f"{entry.path.name}.data*"):  # external data keeps its recorded name
        shutil.copy2(extra, model_dir / "1" / extra.name)
    label_output = None
    if spec.get("task") == "classification" and spec.get("labels"):
        (model_dir / "labels.txt").write_text("".join(f"{label}\n" for label in spec["labels"]))
        label_output = outputs[0].name
    config = model_config(
        entry.name,
        inputs,
        outputs,
        max_batch_size=max_batch_size,
        max_queue_delay_us=max_queue_delay_us,
        label_output=label_output,
    )
    (model_dir / "config.pbtxt").write_text(config)
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
