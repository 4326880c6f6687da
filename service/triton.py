"""Triton's model configuration of one exported file: one function for the served ``GET /v2/models/{name}/config``
(HTTP JSON and gRPC ``ModelConfig``) and for ``cnnserve export-repo``'s ``config.pbtxt``.

The configuration is built from the graph's own inputs and outputs (names, onnxruntime dtypes, dims with -1 for a
dynamic axis), as a dict in Triton's JSON form (protobuf field names, enum names as strings, integers as numbers),
so that ``json_format.ParseDict`` into Triton's ``ModelConfig`` accepts it and :func:`config_pbtxt` writes the same
content as protobuf text. The rules are Triton's:

* **Batching.** When every input and output has a dynamic first axis the model batches: ``max_batch_size`` is the
  batch limit (the served model's measured limit, or export-repo's option), dims leave the batch axis out, and
  ``dynamic_batching`` is on. A model with scalar inputs (the detectors' score / IoU thresholds) cannot be batched
  by Triton: ``max_batch_size: 0`` and full dims; a client sends the batch axis itself. A scalar is written as
  ``dims: [1]`` reshaped to ``[]``.
* **Image inputs** (rank 4: the contract's ``[N, C, H, W]``) carry ``format: FORMAT_NCHW``; Triton's
  ``image_client.py`` refuses an image input without a format.
* **Labels.** A classifier's probabilities output names ``labels.txt`` (export-repo writes it beside the config;
  Triton's classification extension reads label names from it).

Torch-free and free of protobuf: the serving core, the CLI and the gRPC front end all start from this dict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .contract import TensorInfo
from .errors import ModelNotFound
from .runtime.model import ModelInfo

__all__ = ["LABELS_FILE", "TRITON_DTYPES", "config_pbtxt", "label_output", "model_config", "served_config"]

LABELS_FILE = "labels.txt"

# onnxruntime's type strings → Triton's data types.
TRITON_DTYPES = {
    "tensor(float)": "TYPE_FP32",
    "tensor(float16)": "TYPE_FP16",
    "tensor(double)": "TYPE_FP64",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(uint16)": "TYPE_UINT16",
    "tensor(uint32)": "TYPE_UINT32",
    "tensor(uint64)": "TYPE_UINT64",
    "tensor(int8)": "TYPE_INT8",
    "tensor(int16)": "TYPE_INT16",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(bool)": "TYPE_BOOL",
}
_ENUM_FIELDS = {"data_type", "format", "kind"}  # written unquoted in protobuf text


def _data_type(tensor: TensorInfo) -> str:
    if tensor.type not in TRITON_DTYPES:
        raise ModelNotFound(f"tensor {tensor.name!r} has type {tensor.type}, which Triton's ONNX backend cannot take")
    return TRITON_DTYPES[tensor.type]


def _tensor(tensor: TensorInfo, batched: bool, *, is_input: bool) -> dict[str, Any]:
    dims = list(tensor.dims[1:] if batched else tensor.dims)
    entry: dict[str, Any] = {"name": tensor.name, "data_type": _data_type(tensor)}
    if is_input and len(tensor.dims) == 4:
        entry["format"] = "FORMAT_NCHW"
    if dims:
        entry["dims"] = dims
    else:  # a scalar: Triton wants at least one dim
        entry["dims"] = [1]
        entry["reshape"] = {"shape": []}
    return entry


def model_config(
    name: str,
    inputs: Sequence[TensorInfo],
    outputs: Sequence[TensorInfo],
    *,
    max_batch_size: int,
    max_queue_delay_us: int = 0,
    preferred_batch_sizes: Sequence[int] = (),
    label_output: str | None = None,
    instance_group: Sequence[Mapping[str, Any]] = ({"kind": "KIND_AUTO", "count": 1},),
) -> dict[str, Any]:
    """Triton's ``ModelConfig`` of one ONNX model as JSON (see the module's docstring for the rules)."""
    tensors = [*inputs, *outputs]
    batched = max_batch_size > 0 and all(t.dims and t.dims[0] == -1 for t in tensors)
    config: dict[str, Any] = {
        "name": name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": max_batch_size if batched else 0,
        "input": [_tensor(t, batched, is_input=True) for t in inputs],
        "output": [],
    }
    for tensor in outputs:
        entry = _tensor(tensor, batched, is_input=False)
        if tensor.name == label_output:
            entry["label_filename"] = LABELS_FILE
        config["output"].append(entry)
    if batched:
        dynamic: dict[str, Any] = {"max_queue_delay_microseconds": max_queue_delay_us}
        preferred = [b for b in preferred_batch_sizes if 0 < b <= max_batch_size]
        if preferred:
            dynamic = {"preferred_batch_size": preferred, **dynamic}
        config["dynamic_batching"] = dynamic
    config["instance_group"] = [dict(group) for group in instance_group]
    config["default_model_filename"] = "model.onnx"
    return config


def label_output(outputs: Sequence[TensorInfo], labels: Sequence[str] | None) -> str | None:
    """The output that scores the labelled classes: the first of shape ``[N, K]`` with K = the number of labels (a
    classifier's ``probabilities``). Triton names its labels file on it, and the classification extension labels
    its top classes from it."""
    if not labels:
        return None
    for tensor in outputs:
        if len(tensor.dims) == 2 and tensor.dims[1] == len(labels):
            return tensor.name
    return None


def served_config(info: ModelInfo, *, instances: int, device_id: int = 0) -> dict[str, Any]:
    """The configuration of a model as this service serves it: ``max_batch_size`` is its batch limit (one run),
    with no added queue delay (the batcher never waits on purpose: service/runtime/batching.py), the CUDA batch
    buckets as preferred sizes, and one instance per run that may be in flight on its device."""
    contract = info.require_ready()
    policy = info.batching
    group: dict[str, Any] = {"name": info.name, "kind": "KIND_GPU" if info.on_cuda else "KIND_CPU", "count": instances}
    if info.on_cuda:
        group["gpus"] = [device_id]
    return model_config(
        info.name,
        info.inputs,
        info.outputs,
        max_batch_size=policy.max_batch_size if policy else 1,
        preferred_batch_sizes=(policy.buckets or []) if policy else [],
        label_output=label_output(info.outputs, contract.labels),
        instance_group=[group],
    )


def _value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if key in _ENUM_FIELDS else '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


def _fields(config: Mapping[str, Any], indent: str) -> list[str]:
    lines: list[str] = []
    for key, value in config.items():
        if isinstance(value, Mapping):
            if value:
                lines += [f"{indent}{key} {{", *_fields(value, indent + "  "), f"{indent}}}"]
            else:
                lines.append(f"{indent}{key} {{ }}")
        elif isinstance(value, list) and value and isinstance(value[0], Mapping):
            blocks = []
            for item in value:
                blocks.append("\n".join([f"{indent}  {{", *_fields(item, indent + "    "), f"{indent}  }}"]))
            lines.append(f"{indent}{key} [\n" + ",\n".join(blocks) + f"\n{indent}]")
        elif isinstance(value, list):
            lines.append(f"{indent}{key}: [ " + ", ".join(_value(key, v) for v in value) + " ]")
        else:
            lines.append(f"{indent}{key}: {_value(key, value)}")
    return lines


def config_pbtxt(config: Mapping[str, Any]) -> str:
    """The JSON configuration as ``config.pbtxt`` (protobuf text format, what Triton reads from a repository)."""
    return "\n".join(_fields(config, "")) + "\n"
