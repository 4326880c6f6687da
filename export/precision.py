"""Precision variants of an exported fp32 graph: fp16 (for the CUDA provider), static int8 (QDQ), uint8 input.

Each function takes the checked fp32 ONNX file written by :func:`export.onnx.export_onnx` and writes a new one;
the pipeline then adds the metadata and measures the variant's quality (:mod:`export.quality`).

Why it is shaped like this:

* **Only the backbone changes precision.** :func:`backbone_nodes` finds the network proper by topology: every
  Conv / ConvTranspose / Gemm / MatMul node and every node on a path between two of them. What lies before the
  first (the in-graph normalisation) and after the last (softmax, YOLO decode, score threshold, NMS, TopK, the
  autoencoder's sigmoid and its reconstruction error) stays fp32 in both the fp16 and the int8 variants, so the
  numerically sensitive post-processing and the contract's output dtypes never change.
* **fp16** is onnxruntime's own converter (``onnxruntime.transformers.float16``) with ``keep_io_types=True``:
  inputs and outputs stay float32, Casts are inserted at the borders of the fp16 region.
* **int8** is ``quantize_static`` in QDQ format with per-channel weights, after ``quant_pre_process`` (shape
  inference + onnxruntime's basic graph optimisation, which folds BatchNorm into Conv). Calibration (MinMax) sees
  real images, pre-processed by the service's own code (:mod:`export.quality` gathers them).
* **uint8 input** is graph surgery done last, whatever the precision: a new ``images`` input of dtype uint8
  ``[N, C, H, W]`` feeds ``Cast → Div(255)`` into what used to be the float input, so the graph computes exactly
  what :func:`service.imaging.preprocess` computes (``uint8 / 255`` in float32) and a client sends 4× fewer bytes.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from .onnx import INPUT_NAME

__all__ = [
    "PRECISIONS",
    "INPUT_DTYPES",
    "COMPUTE_OPS",
    "backbone_nodes",
    "convert_fp16",
    "quantize_int8",
    "add_uint8_input",
]

logger = logging.getLogger("cnnserve.export")

PRECISIONS = ("fp32", "fp16", "int8")
INPUT_DTYPES = ("float32", "uint8")
# The network proper: what is worth running in fp16 / int8.
COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# Kept in fp32 by the fp16 converter wherever they appear (on top of its own default list), even inside the
# backbone: reductions and normalisations accumulate, detection post-processing compares scores.
FP16_KEEP_OPS = ("Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "NonMaxSuppression", "TopK", "Resize")


def _name_nodes(model: onnx.ModelProto) -> None:
    """Give every node a unique name (node block/exclude lists address nodes by name)."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def backbone_nodes(graph: onnx.GraphProto) -> set[str]:
    """Names of the nodes that are compute ops or lie on a path between two compute ops (see the module doc).

    Nodes inside subgraphs (If/Loop bodies) are not looked at: the wrappers' post-processing has none.
    """
    producers: dict[str, int] = {}
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(graph.node):
        for out in node.output:
            producers[out] = i
        for inp in node.input:
            if inp:
                consumers.setdefault(inp, []).append(i)
    compute = [i for i, node in enumerate(graph.node) if node.op_type in COMPUTE_OPS]

    def walk(start: Iterable[int], step) -> set[int]:
        seen: set[int] = set()
        stack = list(start)
        while stack:
            i = stack.pop()
            for j in step(i):
                if j not in seen:
                    seen.add(j)
                    stack.append(j)
        return seen

    def downstream(i: int) -> Iterator[int]:
        for out in graph.node[i].output:
            yield from consumers.get(out, [])

    def upstream(i: int) -> Iterator[int]:
        for inp in graph.node[i].input:
            if inp in producers:
                yield producers[inp]

    inside = (walk(compute, downstream) & walk(compute, upstream)) | set(compute)
    return {graph.node[i].name for i in inside}


def _outside_backbone(model: onnx.ModelProto) -> list[str]:
    _name_nodes(model)
    inside = backbone_nodes(model.graph)
    return [node.name for node in model.graph.node if node.name not in inside]


def _drop_duplicate_producers(graph: onnx.GraphProto) -> None:
    produced: set[tuple[str, ...]] = set()
    keep = []
    for node in graph.node:
        outputs = tuple(node.output)
        if outputs in produced:
            continue
        produced.add(outputs)
        keep.append(node)
    if len(keep) != len(graph.node):
        copies = [onnx.NodeProto() for _ in keep]
        for copy, node in zip(copies, keep, strict=True):
            copy.CopyFrom(node)
        del graph.node[:]
        graph.node.extend(copies)


def _topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` so every node comes after the producers of its inputs (stable otherwise)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise ValueError("the graph has a cycle or an input nobody produces")
        for node in ready:
            available.update(node.output)
        ordered += ready
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    copies = [onnx.NodeProto() for _ in ordered]
    for copy, node in zip(copies, ordered, strict=True):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def convert_fp16(source: Path, target: Path) -> Path:
    """fp32 graph → fp16 backbone, fp32 inputs/outputs and post-processing (``keep_io_types=True``)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(source))
    keep_fp32 = _outside_backbone(model)
    converted = convert_float_to_float16(
        model,
        keep_io_types=True,
        op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP16_KEEP_OPS)),
        node_block_list=keep_fp32,
        disable_shape_infer=False,
    )
    # The converter appends its border Casts at the end of the node list, and repeats the Cast of an initializer
    # for every blocked consumer under the same output name: keep one of each, in topological order.
    _drop_duplicate_producers(converted.graph)
    _topological_sort(converted.graph)
    onnx.save(converted, str(target))
    onnx.checker.check_model(str(target))
    logger.info("fp16: %d nodes kept in fp32 outside the backbone", len(keep_fp32))
    return target


class _CalibrationReader:
    """``CalibrationDataReader``: one feed per image (dynamic-size models may get differently sized images)."""

    def __init__(self, images: Sequence[np.ndarray], extra_inputs: dict[str, float]) -> None:
        self._feeds = iter(
            {
                INPUT_NAME: np.ascontiguousarray(image[None], dtype=np.float32),
                **{k: np.asarray(v, dtype=np.float32) for k, v in extra_inputs.items()},
            }
            for image in images
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_int8(
    source: Path,
    target: Path,
    calibration: Sequence[np.ndarray],
    *,
    extra_inputs: dict[str, float] | None = None,
) -> Path:
    """Static int8 (QDQ, per-channel weights, MinMax calibration over ``calibration`` images [C, H, W] in [0, 1]);
    nodes outside the backbone are excluded and stay fp32."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration:
        raise ValueError("int8 quantization needs calibration images")
    with tempfile.TemporaryDirectory(prefix="cnnserve-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        exclude = _outside_backbone(model)
        onnx.save(model, str(prepared))  # with the node names the exclusion list refers to
        quantize_static(
            str(prepared),
            str(target),
            _CalibrationReader(calibration, extra_inputs or {}),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=exclude,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
        quantized = onnx.load(str(target))
        _unquantize_exits(quantized, set(exclude))
        onnx.save(quantized, str(target))
    onnx.checker.check_model(str(target))
    logger.info("int8: %d calibration images, %d nodes kept in fp32", len(calibration), len(exclude))
    return target


def _unquantize_exits(model: onnx.ModelProto, outside: set[str]) -> None:
    """Feed the fp32 post-processing the backbone's float output, not its Q→DQ round trip.

    ``quantize_static`` also quantizes the *output* of the last quantized op (ResNet's final Gemm: its logits
    rounded to 256 levels before the softmax). For every node outside the backbone that reads a
    ``DequantizeLinear(QuantizeLinear(x))`` of an activation ``x``, read ``x`` instead; Q/DQ nodes left without a
    consumer are dropped.
    """
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {t.name for t in graph.initializer}
    for node in graph.node:
        if node.name not in outside:
            continue
        for k, name in enumerate(node.input):
            dq = producers.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producers.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear" and q.input[0] not in initializers:
                node.input[k] = q.input[0]
    outputs = {o.name for o in graph.output}
    while True:
        used = {name for node in graph.node for name in node.input} | outputs
        qdq = ("QuantizeLinear", "DequantizeLinear")
        dead = [n for n in graph.node if n.op_type in qdq and n.output[0] not in used]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)


def add_uint8_input(path: Path) -> Path:
    """Replace the float ``images`` input by a uint8 one (same shape) followed by ``Cast → Div(255)``, in place."""
    model = onnx.load(str(path))
    graph = model.graph
    (old,) = [i for i in graph.input if i.name == INPUT_NAME]
    if old.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ValueError(f"{path}: input {INPUT_NAME!r} is not float32")
    inner = f"{INPUT_NAME}_float"
    for node in graph.node:
        node.input[:] = [inner if name == INPUT_NAME else name for name in node.input]
    for node in graph.output:  # an identity graph would return its input; not ours, but stay correct
        if node.name == INPUT_NAME:
            raise ValueError("the images input is also an output")
    new = onnx.ValueInfoProto()
    new.CopyFrom(old)
    new.type.tensor_type.elem_type = TensorProto.UINT8
    position = list(graph.input).index(old)
    graph.input.remove(old)
    graph.input.insert(position, new)
    scale = helper.make_tensor(f"{INPUT_NAME}_scale", TensorProto.FLOAT, [], [255.0])
    graph.initializer.append(scale)
    graph.node.insert(0, helper.make_node("Div", [f"{INPUT_NAME}_cast", scale.name], [inner], name="uint8_scale"))
    graph.node.insert(0, helper.make_node("Cast", [INPUT_NAME], [f"{INPUT_NAME}_cast"], name="uint8_cast", to=1))
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path))
    return path
