"""The graphs of the precision variants, as a specification: valid ONNX, a lean fp16 entry, float32 answers.

For one small model per exported task (the default demos, a random ResNet-18 and, slow, a random Faster R-CNN) and
every precision × input dtype: the file passes ``onnx.checker.check_model(full_check=True)`` and keeps the fp32
file's inputs and outputs; an fp16 file enters its fp16 network through one Cast and one scale-and-shift (the uint8
input's ``/255`` and the normalisation folded together), runs that network in fp16, and computes everything it
answers after it in fp32 —
so a probability, score, box, reconstruction or error read back is a float32 value, not an fp16 one rounded up.
(U-Net's ``logits`` are the network's last convolution itself: an fp16 file gives them at fp16 precision, as
float32.)
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cnnserve.export import export_model
from cnnserve.export.onnx import read_contract
from cnnserve.export.pipeline import DEFAULT_EXPORTS
from cnnserve.export.precision import COMPUTE_OPS, INPUT_DTYPES, PRECISIONS, make_variant
from cnnserve.export.quality import calibration_images, run_onnx
from cnnserve.export.wrappers import export_for
from onnx import TensorProto

from cnnserve import models

# One model per exported task family: the shipped demos (classification, detection, segmentation, autoencoder),
# an ImageNet-size classifier, and (slow: a minute or more to export) Faster R-CNN.
MODELS = (*DEFAULT_EXPORTS, ("resnet18", "random"), ("fasterrcnn_resnet50_fpn", "random"))


def _variants(name: str) -> list[tuple[str, str]]:
    """The variants ``cnnserve export`` makes of this model (an inpainter or a generator: fp16, float32 input)."""
    task = export_for(models.get_spec(name))
    dtypes = INPUT_DTYPES if task.uint8_input else ("float32",)
    return [(p, d) for p in PRECISIONS if p in task.precisions for d in dtypes]


def _slow(name: str):
    return (pytest.mark.slow,) if name.startswith("fasterrcnn") else ()


VARIANTS = [pytest.param(n, p, d, marks=_slow(n)) for n, _ in MODELS for p, d in _variants(n)]
FP16 = [pytest.param(n, d, marks=_slow(n)) for n, _ in MODELS for p, d in _variants(n) if p == "fp16"]
# Outputs computed in fp32 after the network (softmax, decode, NMS, sigmoid, error, the embedding's L2 norm): float32
# values in fp16 files.
FP32_VALUES = {"probabilities", "boxes", "scores", "reconstruction", "error", "embedding"}


@pytest.fixture(scope="module")
def fp32_file(tmp_path_factory: pytest.TempPathFactory):
    """``fp32_file(name)`` → the model's checked fp32 export (made once per module)."""
    folder = tmp_path_factory.mktemp("fp32")
    made: dict[str, Path] = {}

    def export(name: str) -> Path:
        if name not in made:
            weights = dict(MODELS)[name]
            made[name] = export_model(name, weights=weights, output=folder / f"{name}.onnx", save=False).path
        return made[name]

    return export


@pytest.fixture(scope="module")
def variant(fp32_file, tmp_path_factory: pytest.TempPathFactory):
    """``variant(name, precision, input_dtype)`` → the variant's file, made as ``cnnserve export`` makes it."""
    folder = tmp_path_factory.mktemp("variants")
    made: dict[tuple[str, str, str], Path] = {}

    def make(name: str, precision: str, input_dtype: str) -> Path:
        key = (name, precision, input_dtype)
        if key not in made:
            source = fp32_file(name)
            contract = read_contract(source)
            made[key] = make_variant(
                source,
                folder / f"{name}-{precision}-{input_dtype}.onnx",
                precision=precision,
                input_dtype=input_dtype,
                calibration=calibration_images(contract, limit=16) if precision == "int8" else (),
                extra_inputs=contract.extra_inputs,
            )
        return made[key]

    return make


def _types(values) -> list[tuple[str, int]]:
    return [(v.name, v.type.tensor_type.elem_type) for v in values]


# Ops that only move values on the way to the network: R-CNN pads the image to its stride; the eight-view YOLO mirrors
# and transposes it and concatenates the views into one batch.
MOVERS = {"Pad", "Slice", "Transpose", "Concat"}


def _entry(model: onnx.ModelProto) -> tuple[list[onnx.NodeProto], onnx.NodeProto]:
    """The nodes between the graph input and the first compute op, in graph order: what computes its data input,
    less the constants of a Mul/Add and the pad widths and slice bounds of a Pad or Slice (constants, or computed
    from the input's shape)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    first = next(node for node in model.graph.node if node.op_type in COMPUTE_OPS)
    constants = {t.name for t in model.graph.initializer}
    found: dict[str, onnx.NodeProto] = {}
    stack = [first.input[0]]
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.name in found:
            continue
        found[node.name] = node
        if node.op_type in ("Cast", "Pad", "Slice", "Transpose"):
            stack.append(node.input[0])
        elif node.op_type in ("Mul", "Add"):
            stack.extend(name for name in node.input if name not in constants)
        else:
            stack.extend(node.input)
    return [node for node in model.graph.node if node.name in found], first


def _cast_to(node: onnx.NodeProto) -> int:
    return next(a.i for a in node.attribute if a.name == "to")


@pytest.mark.parametrize(("name", "precision", "input_dtype"), VARIANTS)
def test_every_variant_passes_the_full_onnx_check_and_keeps_the_outputs(
    name: str, precision: str, input_dtype: str, variant, fp32_file
) -> None:
    path = variant(name, precision, input_dtype)
    onnx.checker.check_model(str(path), full_check=True)  # strict type and shape inference over the whole file
    model, reference = onnx.load(str(path)), onnx.load(str(fp32_file(name)))
    (image, *extra) = model.graph.input
    assert image.type.tensor_type.elem_type == (TensorProto.UINT8 if input_dtype == "uint8" else TensorProto.FLOAT)
    assert _types(extra) == _types(reference.graph.input[1:])  # thresholds stay float32 scalars
    assert _types(model.graph.output) == _types(reference.graph.output)
    read = {name for node in model.graph.node for name in node.input}
    assert [t.name for t in model.graph.initializer if t.name not in read] == []  # nothing left behind


@pytest.mark.parametrize(("name", "input_dtype"), FP16)
def test_fp16_entry_is_one_cast_and_one_scale_and_shift(name: str, input_dtype: str, variant) -> None:
    model = onnx.load(str(variant(name, "fp16", input_dtype)))
    entry, first = _entry(model)
    ops = Counter(node.op_type for node in entry)
    assert ops["Cast"] == 1 and ops["Mul"] <= 1 and ops["Add"] <= 1 and ops["Pad"] <= 1, ops
    assert set(ops) <= {"Cast", "Mul", "Add"} | MOVERS, [node.op_type for node in entry]
    (cast,) = [node for node in entry if node.op_type == "Cast"]
    assert cast.input[0] == "images" and _cast_to(cast) == TensorProto.FLOAT16 and entry[0] is cast
    # The scale-and-shift is the pixels' /255 (uint8) and the spec's normalisation, in fp16.
    spec = models.get_spec(name)
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    scale = np.ones(spec.in_channels)
    shift = np.zeros(spec.in_channels)
    for node in entry[1:]:
        if node.op_type in MOVERS:
            continue
        (value,) = [constants[n] for n in node.input if n in constants]
        assert value.dtype == np.float16
        if node.op_type == "Mul":
            scale = value.astype(np.float64).reshape(-1)
        else:
            shift = value.astype(np.float64).reshape(-1)
    pixels = 255.0 if input_dtype == "uint8" else 1.0
    np.testing.assert_allclose(scale, 1 / (pixels * np.array(spec.std)), rtol=1e-3)
    np.testing.assert_allclose(shift, -np.array(spec.mean) / np.array(spec.std), rtol=1e-3, atol=1e-3)
    # The network behind it computes in fp16: every compute op reads fp16 weights.
    for node in model.graph.node:
        if node.op_type in COMPUTE_OPS:
            assert constants[node.input[1]].dtype == np.float16, node.name
    assert first.input[0] == entry[-1].output[0]


@pytest.mark.parametrize(("name", "input_dtype"), FP16)
def test_fp16_answers_are_float32_values(name: str, input_dtype: str, variant) -> None:
    """No fp32 → fp16 → fp32 round trip anywhere, and what the post-processing answers is not fp16-valued."""
    path = variant(name, "fp16", input_dtype)
    model = onnx.load(str(path))
    producers = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        if node.op_type == "Cast" and _cast_to(node) == TensorProto.FLOAT:
            before = producers.get(node.input[0])
            assert before is None or before.op_type != "Cast", f"{before.name} → {node.name}"

    contract = read_contract(path)
    images = calibration_images(contract, limit=16)  # the demo's data, or photos (R-CNN: each its own size)
    images = np.stack(images) if len({image.shape for image in images}) == 1 else images
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    extra = {k: 1e-3 if k == "score_threshold" else v for k, v in contract.extra_inputs.items()}  # many boxes
    outputs = {
        o.name: np.concatenate(chunks)
        for o, chunks in zip(session.get_outputs(), run_onnx(session, images, **extra), strict=True)
    }
    counts = outputs.get("num_detections")
    checked = 0
    for output, values in outputs.items():
        if output not in FP32_VALUES:
            continue
        assert values.dtype == np.float32, output
        if counts is not None:  # the detections, not the zero padding
            values = np.concatenate([row[:count] for row, count in zip(values, counts, strict=True)])
        values = values[values != 0].ravel()
        assert values.size >= 10, output
        fp16_valued = values.astype(np.float16).astype(np.float32) == values
        assert fp16_valued.mean() < 0.5, f"{output}: {fp16_valued.mean():.0%} of the values are fp16 values"
        checked += 1
    assert checked or name == "unet"  # U-Net answers only its logits
