"""Precision variants of an exported fp32 graph: fp16 (for the CUDA provider), static int8 (QDQ), uint8 input.

Each function takes the checked fp32 ONNX file written by :func:`export.onnx.export_onnx` and writes a new one;
the pipeline then adds the metadata and measures the variant's quality (:mod:`export.quality`).

Why it is shaped like this:

* **Only the backbone changes precision.** :func:`backbone_nodes` finds the network proper by topology: every
  Conv / ConvTranspose / Gemm / MatMul node and every node on a path between two of them. What lies after the
  last (softmax, YOLO decode, score threshold, NMS, TopK, the autoencoder's sigmoid and its reconstruction error)
  stays fp32 in both the fp16 and the int8 variants, so the numerically sensitive post-processing runs in
  float32 and the contract's output dtypes never change. What lies before the first (the in-graph normalisation) stays
  fp32 in the int8 variant and becomes the fp16 variant's entry into its fp16 network.
* **fp16** is onnxruntime's own converter (``onnxruntime.transformers.float16``) with ``keep_io_types=True`` and
  the nodes outside the backbone on its node block list, followed by three repairs that the converter needs (see
  :func:`convert_fp16`): the input's normalisation becomes **one Cast and one scale-and-shift in fp16** feeding the
  first convolution, the converter's fp32 → fp16 → fp32 round trips between fp32 nodes are removed (so the
  post-processing and the outputs carry float32 values, not fp16 ones), and the file's ``value_info`` is inferred
  afresh (the converter leaves fp16 declarations on initializers it kept fp32, which
  ``onnx.checker.check_model(full_check=True)`` rejects).
* **int8** is ``quantize_static`` in QDQ format with per-channel weights, after ``quant_pre_process`` (shape
  inference + onnxruntime's basic graph optimisation, which folds BatchNorm into Conv). Calibration (MinMax) sees
  real images, pre-processed by the service's own code (:mod:`export.quality` gathers them).
* **uint8 input** is graph surgery: a new ``images`` input of dtype uint8 ``[N, C, H, W]`` feeds ``Cast → Div(255)``
  into what used to be the float input. For fp32 and int8 it is done last and the graph computes exactly what
  :func:`service.imaging.preprocess` computes (``uint8 / 255`` in float32, so the answers are bit-identical to the
  float file's); for fp16 it is done first, so that ``/255`` folds into the normalisation's single fp16
  scale-and-shift. A client sends 4× fewer bytes either way.

Every variant passes ``onnx.checker.check_model(full_check=True)``, as the fp32 export does.
"""

from __future__ import annotations

import logging
import shutil
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
    "make_variant",
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


def make_variant(
    source: Path,
    target: Path,
    *,
    precision: str,
    input_dtype: str = "float32",
    calibration: Sequence[np.ndarray] = (),
    extra_inputs: dict[str, float] | None = None,
) -> Path:
    """The checked fp32 file ``source`` → the ``precision`` / ``input_dtype`` variant at ``target``.

    ``calibration`` (images [C, H, W] in [0, 1]) is for int8. The uint8 input is added last to an fp32 or int8
    file (bit-identical to the float file on the same pixels) and first for fp16 (folded into its entry).
    """
    if precision not in PRECISIONS or input_dtype not in INPUT_DTYPES:
        raise ValueError(f"unknown variant {precision}/{input_dtype}")
    target.parent.mkdir(parents=True, exist_ok=True)
    if precision == "fp16":
        return convert_fp16(source, target, input_dtype=input_dtype)
    if precision == "int8":
        quantize_int8(source, target, calibration, extra_inputs=extra_inputs)
    else:
        shutil.copy2(source, target)
    return add_uint8_input(target) if input_dtype == "uint8" else target


def convert_fp16(source: Path, target: Path, *, input_dtype: str = "float32") -> Path:
    """fp32 graph → fp16 network entered through one Cast and one scale-and-shift, fp32 post-processing and outputs.

    onnxruntime's converter does the conversion; it cannot do three things this needs, which the steps around it
    do. It casts a float graph input to fp16 before any consumer, so a blocked (fp32) normalisation would run
    ``Cast → Cast back → Sub → Cast → Cast back → Div → Cast``: :func:`_fold_input_normalisation` first turns the
    normalisation (and a uint8 input's ``/255``) into one ``Mul``/``Add`` that the converter runs in fp16. It
    declares every float tensor fp16 and wraps each blocked node in Casts, so between two fp32 nodes — all of the
    post-processing, and the graph outputs — values go fp32 → fp16 → fp32 (a served probability came out as an
    fp16 value): :func:`_remove_cast_round_trips` removes those pairs. And it declares fp16 the initializers it
    kept fp32 for blocked consumers: the ``value_info`` is inferred afresh (:func:`_refresh_value_info`).
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(source))
    if input_dtype == "uint8":
        _uint8_input(model)
    entry = _fold_input_normalisation(model)
    _prune(model.graph)
    keep_fp32 = [name for name in _outside_backbone(model) if name not in entry]
    source_nodes = {node.name for node in model.graph.node}
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
    _remove_cast_round_trips(converted, added={n.name for n in converted.graph.node} - source_nodes)
    _prune(converted.graph)
    _restore_names(converted.graph)
    _refresh_value_info(converted)
    onnx.save(converted, str(target))
    onnx.checker.check_model(str(target), full_check=True)
    logger.info("fp16: %d nodes kept in fp32 outside the backbone", len(keep_fp32))
    return target


_AFFINE_OPS = frozenset({"Add", "Sub", "Mul", "Div"})
# Ops that move values, not compute them: their data is input 0 (the others are shapes, pads, bounds), or for a Concat
# every input (the eight-view YOLO stacks the mirrored and transposed images in one batch).
_MOVERS = frozenset({"Pad", "Identity", "Reshape", "Transpose", "Slice", "Concat"})


def _moved_inputs(node: onnx.NodeProto) -> int:
    """How many of a mover's first inputs are the values it moves."""
    return len(node.input) if node.op_type == "Concat" else 1


_FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16})


def _cast_to(node: onnx.NodeProto) -> int:
    return next(a.i for a in node.attribute if a.name == "to")


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Initializers and ``Constant`` node outputs by name."""
    values = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t)
    return values


def _per_channel(value: np.ndarray, channels: int) -> np.ndarray | None:
    """``value`` as a [C] vector when it broadcasts against [N, C, H, W] along the channels only, else None."""
    if value.ndim > 4:
        return None
    shape = (1,) * (4 - value.ndim) + value.shape
    if shape[0] != 1 or shape[2] != 1 or shape[3] != 1 or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(value.astype(np.float64).reshape(-1), (channels,)).copy()


def _fold_input_normalisation(model: onnx.ModelProto) -> set[str]:
    """Feed the backbone ``images`` through one Cast (for a non-float input) and one ``Mul``/``Add``; returns the
    names of the new nodes (the fp16 variant's entry, converted to fp16 with the backbone).

    A chain from ``images`` to a backbone input made only of Casts and of ``Add``/``Sub``/``Mul``/``Div`` by a
    per-channel constant — the uint8 input's ``Cast → Div(255)`` and :class:`export.wrappers.Normalize`'s
    ``(x − mean) / std`` — is one affine map ``x · scale + shift``: the backbone reads that instead (a ``Mul`` or
    ``Add`` that would do nothing is left out), through a copy of whatever only moves values between the two
    (R-CNN's ``Pad`` to its stride; the eight-view YOLO's mirrors and transposes and the ``Concat`` of its views).
    The old chain stays for any other consumer (the autoencoder's error reads the [0, 1] pixels in fp32) and is
    pruned otherwise; ``Shape`` of any value on it reads ``images`` (elementwise ops
    keep the shape), so nothing full-size is computed just for a shape. Folding into the first convolution instead
    is not exact: its zero padding would pad raw pixels, not normalised ones.
    """
    graph = model.graph
    _name_nodes(model)
    (image,) = [i for i in graph.input if i.name == INPUT_NAME]
    dims = image.type.tensor_type.shape.dim
    channels = dims[1].dim_value if len(dims) == 4 and dims[1].HasField("dim_value") else 0
    if not channels:
        return set()
    constants = _constants(graph)
    producers = {out: node for node in graph.node for out in node.output}
    backbone = backbone_nodes(graph)

    def moved_from(name: str) -> tuple[str, list[onnx.NodeProto]] | None:
        """The one value ``name`` is moved from by ops that only move values (R-CNN pads the normalised image to its
        stride; the eight-view YOLO mirrors, transposes and concatenates it), and those ops, in graph order."""
        movers: dict[str, onnx.NodeProto] = {}
        sources: set[str] = set()
        stack = [name]
        while stack:
            value = stack.pop()
            node = producers.get(value)
            if node is not None and node.op_type in _MOVERS:
                if node.name not in movers:
                    movers[node.name] = node
                    stack.extend(node.input[: _moved_inputs(node)])
            else:
                sources.add(value)
        if len(sources) != 1:
            return None
        return sources.pop(), [node for node in graph.node if node.name in movers]

    def trace(name: str) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]] | None:
        """The chain of nodes from ``images`` to ``name`` (in order) when it is a per-channel affine map followed by
        ops that only move values (:func:`moved_from`): (affine chain, movers)."""
        if (moved := moved_from(name)) is None:
            return None
        name, movers = moved
        chain: list[onnx.NodeProto] = []
        while name != INPUT_NAME:
            node = producers.get(name)
            if node is None:
                return None
            if node.op_type == "Cast" and _cast_to(node) in _FLOAT_TYPES:
                name = node.input[0]
            elif node.op_type in _AFFINE_OPS and len(node.input) == 2:
                first, second = node.input
                if second in constants and _per_channel(constants[second], channels) is not None:
                    name = first
                elif first in constants and node.op_type in ("Add", "Sub", "Mul"):
                    if _per_channel(constants[first], channels) is None:
                        return None
                    name = second
                else:
                    return None
            else:
                return None
            chain.append(node)
        return (chain[::-1], movers) if chain else None

    entries: dict[str, tuple[list[onnx.NodeProto], list[onnx.NodeProto]]] = {}  # backbone input → trace()
    for node in graph.node:
        if node.name not in backbone:
            continue
        for name in node.input:
            producer = producers.get(name)
            if producer is None or producer.name in backbone or name in entries or name in constants:
                continue
            if chain := trace(name):
                entries[name] = chain
    new_nodes: list[onnx.NodeProto] = []
    for k, (name, (chain, movers)) in enumerate(entries.items()):
        scale, shift = np.ones(channels), np.zeros(channels)
        for node in chain:
            if node.op_type == "Cast":
                continue
            first, second = node.input
            constant_first = second not in constants  # as trace() read it
            c = _per_channel(constants[first if constant_first else second], channels)
            if node.op_type == "Mul":
                scale, shift = scale * c, shift * c
            elif node.op_type == "Div":
                scale, shift = scale / c, shift / c
            elif node.op_type == "Add":
                shift = shift + c
            elif constant_first:  # c − x
                scale, shift = -scale, c - shift
            else:  # x − c
                shift = shift - c
        value, suffix = INPUT_NAME, "" if k == 0 else f"_{k}"
        steps: list[onnx.NodeProto] = []
        if image.type.tensor_type.elem_type != TensorProto.FLOAT:
            steps.append(helper.make_node("Cast", [value], [f"entry_cast{suffix}"], f"entry_cast{suffix}", to=1))
            value = steps[-1].output[0]
        for op, vector, skip in (("Mul", scale, 1.0), ("Add", shift, 0.0)):
            if not np.all(vector == skip):
                constant = f"entry_{'scale' if op == 'Mul' else 'shift'}{suffix}"
                graph.initializer.append(
                    helper.make_tensor(constant, TensorProto.FLOAT, [1, channels, 1, 1], vector.astype(np.float32))
                )
                steps.append(helper.make_node(op, [value, constant], [f"{constant}_out"], name=constant))
                value = steps[-1].output[0]
        source = value  # the movers' copies read the entry where the originals read the affine chain's end
        renamed = {chain[-1].output[0]: source}
        for m, mover in enumerate(movers):  # a copy, in fp16 with the entry (the original may have other consumers)
            copy = onnx.NodeProto()
            copy.CopyFrom(mover)
            copy.name = f"entry_{mover.op_type.lower()}{suffix}" + (f"_{m}" if len(movers) > 1 else "")
            data = _moved_inputs(mover)
            copy.input[:data] = [renamed.get(n, n) for n in copy.input[:data]]
            copy.output[:] = [f"{copy.name}_out"]
            renamed[mover.output[0]] = copy.output[0]
            steps.append(copy)
        value = renamed.get(name, source)
        for node in graph.node:
            if node.name in backbone:
                node.input[:] = [value if n == name else n for n in node.input]
        on_chain = {INPUT_NAME} | {out for node in chain for out in node.output}
        for node in graph.node:
            if node.op_type == "Shape" and node.input[0] in on_chain:
                node.input[0] = INPUT_NAME
        new_nodes += steps
    graph.node.extend(new_nodes)
    _topological_sort(graph)  # a mover reads values computed later in the list (R-CNN's pads from the shape)
    if new_nodes:
        logger.info("fp16 entry: %s", " → ".join(node.op_type for node in new_nodes))
    return {node.name for node in new_nodes}


_EXACT_IN = {  # a Cast to the key type keeps every value of these types exactly
    TensorProto.FLOAT: {TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.UINT8, TensorProto.INT8,
                        TensorProto.UINT16, TensorProto.INT16, TensorProto.BOOL},
    TensorProto.FLOAT16: {TensorProto.UINT8, TensorProto.INT8, TensorProto.BOOL},
    TensorProto.DOUBLE: {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.UINT8, TensorProto.INT8,
                         TensorProto.UINT16, TensorProto.INT16, TensorProto.UINT32, TensorProto.INT32,
                         TensorProto.BOOL},
}  # fmt: skip


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value, by ONNX type inference on a copy without the (possibly stale) value_info."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(copy)
    types = {t.name: t.data_type for t in inferred.graph.initializer}
    for info in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
            types[info.name] = info.type.tensor_type.elem_type
    return types


def _remove_cast_round_trips(model: onnx.ModelProto, *, added: set[str]) -> None:
    """Remove the fp32 → fp16 → fp32 Cast pairs the converter puts between fp32 nodes, and Casts left doing nothing.

    ``Cast(b) ∘ Cast(a)`` reads the first Cast's input directly when that changes no value (the first Cast widens
    exactly: uint8 → float32 → float16 is uint8 → float16), or when the first Cast is one of the converter's
    (``added``) fp32 → fp16 and the second goes back to fp32: that pair only loses precision between two fp32
    nodes. A Cast to the type its input already has is then dropped (a graph output is renamed onto its producer).
    ``onnxruntime.transformers.onnx_model.OnnxModel.remove_cascaded_cast_nodes`` does the first step for *every*
    Cast pair, which would also collapse a deliberate float → int64 → float (a floor) in the post-processing.
    """
    graph = model.graph
    types = _elem_types(model)
    producers = {out: node for node in graph.node for out in node.output}
    for node in graph.node:  # topological order: a chain of Casts collapses from its start
        first = producers.get(node.input[0]) if node.op_type == "Cast" else None
        if first is None or first.op_type != "Cast" or first.input[0] not in types:
            continue
        source, middle, to = types[first.input[0]], _cast_to(first), _cast_to(node)
        exact = source == middle or source in _EXACT_IN.get(middle, set())
        round_trip = first.name in added and (source, middle, to) == (1, 10, 1)
        if exact or round_trip:
            node.input[0] = first.input[0]
    graph_outputs = {o.name for o in graph.output}
    fixed = {i.name for i in graph.input} | {t.name for t in graph.initializer} | graph_outputs
    for node in list(graph.node):
        if node.op_type != "Cast" or types.get(node.input[0]) != _cast_to(node):
            continue
        old, new = node.output[0], node.input[0]
        if old in graph_outputs:
            if new in fixed:
                continue
            old, new = new, old  # the producer writes the graph output itself
        graph.node.remove(node)
        for other in graph.node:
            other.input[:] = [new if name == old else name for name in other.input]
            other.output[:] = [new if name == old else name for name in other.output]


def _restore_names(graph: onnx.GraphProto) -> None:
    """Give an fp32 node's output back its fp32 file's name where the converter renamed it ``X_cast_to_fp16`` (for
    a Cast to fp16 that round-trip removal made dead), so the variant reads like its source in a graph viewer."""
    produced = {out for node in graph.node for out in node.output}
    names = {t.name for t in graph.initializer} | {i.name for i in graph.input} | produced
    renames = {
        name: name.removesuffix("_cast_to_fp16")
        for name in produced
        if name.endswith("_cast_to_fp16") and name.removesuffix("_cast_to_fp16") not in names
    }
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]


def _used_names(graph: onnx.GraphProto) -> set[str]:
    """Every value read by a node of ``graph`` or of its subgraphs (If/Loop bodies read outer values by name)."""
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(node.input)
        for attribute in node.attribute:
            for sub in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                used |= _used_names(sub)
    return used


def _prune(graph: onnx.GraphProto) -> None:
    """Drop nodes whose outputs nobody reads, then initializers nobody reads."""
    while True:
        used = _used_names(graph)
        dead = [node for node in graph.node if not any(out in used for out in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = _used_names(graph)
    keep = [t for t in graph.initializer if t.name in used]
    if len(keep) != len(graph.initializer):
        copies = [onnx.TensorProto() for _ in keep]
        for copy, tensor in zip(copies, keep, strict=True):
            copy.CopyFrom(tensor)
        del graph.initializer[:]
        graph.initializer.extend(copies)


def _refresh_value_info(model: onnx.ModelProto) -> None:
    """Replace the ``value_info`` by what strict ONNX type and shape inference says about the graph as it is."""
    del model.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    model.graph.value_info.extend(inferred.graph.value_info)


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
    onnx.checker.check_model(str(target), full_check=True)
    logger.info("int8: %d calibration images, %d nodes kept in fp32", len(calibration), len(exclude))
    return target


def _unquantize_exits(model: onnx.ModelProto, outside: set[str]) -> None:
    """Feed the fp32 post-processing the backbone's float output, not its Q→DQ round trip.

    ``quantize_static`` also quantizes the *output* of the last quantized op (ResNet's final Gemm: its logits
    rounded to 256 levels before the softmax). For every node outside the backbone that reads a
    ``DequantizeLinear(QuantizeLinear(x))`` of an activation ``x``, read ``x`` instead; Q/DQ nodes left without a
    consumer are dropped, with their scales and zero points.
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
    _prune(graph)


def add_uint8_input(path: Path) -> Path:
    """Replace the float ``images`` input by a uint8 one (same shape) followed by ``Cast → Div(255)``, in place."""
    model = onnx.load(str(path))
    _uint8_input(model)
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return path


def _uint8_input(model: onnx.ModelProto) -> None:
    graph = model.graph
    (old,) = [i for i in graph.input if i.name == INPUT_NAME]
    if old.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ValueError(f"input {INPUT_NAME!r} is not float32")
    if any(o.name == INPUT_NAME for o in graph.output):  # an identity graph would return its input; not ours
        raise ValueError("the images input is also an output")
    inner = f"{INPUT_NAME}_float"
    for node in graph.node:
        node.input[:] = [inner if name == INPUT_NAME else name for name in node.input]
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
