"""Precision variants as a specification: fp16 / int8 / uint8-input files keep the contract and the demos' quality.

Quality gates (issue 7), each measured through onnxruntime on the demo's held-out set against the fp32 export:
LeNet-5 digits accuracy drop ≤ 0.5 pt, U-Net mean IoU drop ≤ 1 pt, YOLO mAP@0.5 drop ≤ 2 pt, CAE anomaly AUROC
drop ≤ 0.01; an ImageNet-size classifier (ResNet-18, random weights with randomised BatchNorm statistics so its
outputs are not flat) must keep its top-5 on a fixed photo set and its logits' direction.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from cnnserve.export import export_model
from cnnserve.export.demos.digits import digit_png, digits_split
from cnnserve.export.onnx import contract_for, read_contract, read_metadata
from cnnserve.export.quality import photo_images
from cnnserve.service.imaging import preprocess

from cnnserve import models

CNNSERVE = str(Path(sys.executable).parent / "cnnserve")
GATES = {"lenet5": 0.005, "unet": 0.01, "yolov1_shapes": 0.02, "yolov1_shapes_conv": 0.02, "cae": 0.01}
FAST = [
    ("lenet5", "int8"),
    ("lenet5", "fp16"),
    ("cae", "int8"),
    ("cae", "fp16"),
    ("yolov1_shapes", "int8"),
    ("yolov1_shapes_conv", "int8"),
]
SLOW = [("yolov1_shapes", "fp16"), ("yolov1_shapes_conv", "fp16"), ("unet", "int8"), ("unet", "fp16")]


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


@pytest.mark.parametrize(("name", "precision"), FAST + [pytest.param(*case, marks=pytest.mark.slow) for case in SLOW])
def test_demo_variant_keeps_its_quality_and_the_contract(name: str, precision: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}-{precision}.onnx"
    result = export_model(name, weights="demo", precision=precision, output=path, save=False)

    quality = result.quality
    assert quality is not None and quality["drop"] <= GATES[name], quality
    assert quality["fp32"] > 0.8 and quality["variant"] > 0.8  # the demos are trained models, not noise
    meta = read_metadata(path)
    assert meta["cnnserve.precision"] == precision and meta["cnnserve.spec"]["precision"] == precision
    assert json.loads(meta["cnnserve.quality"]) == quality

    proto = onnx.load(str(path))
    ops = Counter(node.op_type for node in proto.graph.node)
    if precision == "int8":
        assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > ops["QuantizeLinear"]  # + per-channel weights
        read = {name for node in proto.graph.node for name in node.input}
        assert [t.name for t in proto.graph.initializer if t.name not in read] == []  # onnxruntime warns of these
    else:
        assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in proto.graph.initializer)
    # The contract's input and output types do not change with the precision.
    reference = _session(export_model(name, weights="demo", output=tmp_path / "fp32.onnx", save=False).path)
    variant = _session(path)
    assert [(i.name, i.type) for i in variant.get_inputs()] == [(i.name, i.type) for i in reference.get_inputs()]
    assert [(o.name, o.type) for o in variant.get_outputs()] == [(o.name, o.type) for o in reference.get_outputs()]
    # Post-processing stays fp32 and unquantised: nothing fp16 or int8 feeds Softmax, NMS, TopK or the error.
    producers = _producers(proto)
    for node in proto.graph.node:
        if node.op_type in ("Softmax", "NonMaxSuppression", "TopK", "ReduceMean"):
            for name_in in node.input:
                producer = producers.get(name_in)
                assert producer is None or producer.op_type not in ("DequantizeLinear",), node.name
                if producer is not None and producer.op_type == "Cast":
                    assert next(a.i for a in producer.attribute if a.name == "to") != onnx.TensorProto.FLOAT16


def test_lenet5_int8_accuracy_measured_independently(tmp_path: Path) -> None:
    """The recorded accuracy is what a plain onnxruntime script gets on the 450 held-out digits."""
    path = tmp_path / "lenet5-int8.onnx"
    result = export_model("lenet5", weights="demo", precision="int8", output=path, save=False)
    split = digits_split()
    pre = read_contract(path).preprocess
    from cnnserve.export.demos.digits import digit_image

    images = np.stack([preprocess(digit_image(d), pre) for d in split.test_images])
    (probs,) = _session(path).run(["probabilities"], {"images": images})
    accuracy = float((probs.argmax(1) == split.test_labels).mean())
    assert accuracy == pytest.approx(result.quality["variant"], abs=1e-6)
    assert accuracy >= 0.97


def test_uint8_input_variant_computes_what_the_service_preprocessing_computes(tmp_path: Path) -> None:
    fp32 = export_model("yolov1_shapes", weights="demo", output=tmp_path / "f.onnx", save=False).path
    u8 = export_model(
        "yolov1_shapes", weights="demo", input_dtype="uint8", output=tmp_path / "u8.onnx", save=False
    ).path
    meta = read_metadata(u8)
    assert meta["cnnserve.spec"]["input_dtype"] == "uint8" and meta["cnnserve.precision"] == "fp32"
    session = _session(u8)
    assert session.get_inputs()[0].type == "tensor(uint8)"
    assert isinstance(session.get_inputs()[0].shape[0], str)  # still a dynamic batch
    pixels = np.random.default_rng(0).integers(0, 256, (3, 3, 128, 128), dtype=np.uint8)
    thresholds = {"score_threshold": np.array(0.05, np.float32), "iou_threshold": np.array(0.45, np.float32)}
    got = session.run(None, {"images": pixels, **thresholds})
    expected = _session(fp32).run(None, {"images": pixels.astype(np.float32) / np.float32(255.0), **thresholds})
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e)


def test_fp16_uint8_variant_saved_under_the_contract_tag() -> None:  # into the session's private store
    import bentoml

    result = export_model("lenet5", weights="demo", precision="fp16", input_dtype="uint8")
    assert result.tag is not None and result.tag.startswith("lenet5-fp16-u8:")
    entry = bentoml.models.get(result.tag)
    assert entry.info.metadata["precision"] == "fp16" and entry.info.metadata["input_dtype"] == "uint8"
    onnx_path = Path(entry.path_of(entry.info.metadata["onnx_file"]))
    quality = read_contract(onnx_path).quality
    assert quality is not None and quality.metric == "accuracy" and quality.drop <= GATES["lenet5"]
    (inp,) = _session(onnx_path).get_inputs()
    assert inp.type == "tensor(uint8)"


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CNNSERVE, *args], capture_output=True, text=True, env=os.environ, timeout=600)


def test_cli_int8_calibrates_on_a_user_folder(tmp_path: Path) -> None:
    folder = tmp_path / "calib" / "nested"
    folder.mkdir(parents=True)
    split = digits_split()
    for i, digit in enumerate(split.train_images[:24]):
        (folder / f"{i}.png").write_bytes(digit_png(digit))
    out = tmp_path / "lenet5-int8.onnx"
    result = _run_cli(
        "export", "lenet5", "--weights", "demo", "--precision", "int8",
        "--calibration", str(tmp_path / "calib"), "--output", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "int8/float32: accuracy" in result.stdout and "drop" in result.stdout
    # a quiet export: no onnxruntime warning (the Q/DQ pairs removed at the exits leave no dead initializer)
    assert "[W:onnxruntime" not in result.stderr and "Removing initializer" not in result.stderr, result.stderr
    quality = json.loads(read_metadata(out)["cnnserve.quality"])
    assert quality["drop"] <= GATES["lenet5"]

    empty = tmp_path / "empty"
    empty.mkdir()
    failed = _run_cli("export", "lenet5", "--weights", "demo", "--precision", "int8", "--calibration", str(empty))
    assert failed.returncode == 2 and "no images" in failed.stderr and "Traceback" not in failed.stderr
    bad = _run_cli("export", "lenet5", "--precision", "int4")
    assert bad.returncode == 2 and "unknown precision 'int4'" in bad.stderr


def _resnet18_with_bn_statistics(path: Path) -> None:
    """Random ResNet-18 weights whose BatchNorm statistics are randomised too, so channels are not all normalised
    alike, with the last layer scaled so the logits on the photos spread like a trained network's (std ≈ 3):
    confident top classes, a meaningful top-5, no probabilities underflowing to 0."""
    from safetensors.torch import save_file

    torch.manual_seed(7)
    model = models.build_model("resnet18").eval()
    generator = torch.Generator().manual_seed(7)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) * 0.5 + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    spec = models.get_spec("resnet18")
    images = torch.from_numpy(photo_images(contract_for(spec).preprocess))
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model((images - mean) / std)
        scale = 3.0 / float((logits - logits.mean(1, keepdim=True)).std())
        model.fc.weight.mul_(scale)
        model.fc.bias.mul_(scale)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_imagenet_classifier_keeps_top5_and_logit_direction(precision: str, tmp_path: Path) -> None:
    weights = tmp_path / "resnet18.safetensors"
    _resnet18_with_bn_statistics(weights)
    fp32 = export_model("resnet18", weights=str(weights), output=tmp_path / "fp32.onnx", save=False).path
    path = tmp_path / f"{precision}.onnx"
    quality = export_model("resnet18", weights=str(weights), precision=precision, output=path, save=False).quality
    assert quality["metric"] == "top5_overlap" and quality["data"].startswith("skimage.data photos")
    # The fp32 file is not flat on these photos: its top class is confident compared with uniform 1/1000.
    images = photo_images(read_contract(fp32).preprocess)
    (probs,) = _session(fp32).run(["probabilities"], {"images": images})
    assert 10 / 1000 < float(probs.max(1).mean()) < 0.99
    if precision == "fp16":
        assert quality["max_abs_probability_delta"] <= 1e-2
        assert quality["variant"] >= 0.95 and quality["logit_cosine"] >= 0.995
    else:
        assert quality["variant"] >= 0.8 and quality["top1_agreement"] >= 0.8
        assert quality["logit_cosine"] >= 0.98


def test_models_route_shows_the_variant_and_its_quality(tmp_path: Path) -> None:
    """Served int8 and fp16-u8 variants answer like their fp32 file and `GET /models` shows their precision and
    quality drop; the fp16 file's scores are float32 probabilities, not fp16 values."""
    import requests
    from conftest import start_server, stop_server

    base_tag = export_model("lenet5", weights="demo", tag="lenet5").tag  # the session's private store
    tag = export_model("lenet5", weights="demo", precision="int8").tag
    fp16_tag = export_model("lenet5", weights="demo", precision="fp16", input_dtype="uint8").tag
    assert base_tag.startswith("lenet5:") and tag.startswith("lenet5-int8:") and fp16_tag.startswith("lenet5-fp16-u8:")
    server = start_server({"CNNSERVE_MODELS": "lenet5,lenet5-int8,lenet5-fp16-u8"}, tmp_path / "serve.log")
    try:
        listed = {m["name"]: m for m in requests.get(f"{server.url}/models", timeout=30).json()["models"]}
        variant, base, fp16 = listed["lenet5-int8"], listed["lenet5"], listed["lenet5-fp16-u8"]
        assert variant["ready"] and variant["precision"] == "int8" and base["quality"] is None
        assert variant["quality"]["metric"] == "accuracy" and variant["quality"]["drop"] <= GATES["lenet5"]
        assert fp16["ready"] and fp16["precision"] == "fp16" and fp16["quality"]["drop"] <= GATES["lenet5"]
        split = digits_split()
        fp16_scores = []
        for pixels, label in zip(split.test_images[:5], split.test_labels[:5], strict=True):
            answers = {}
            for model in ("lenet5", "lenet5-int8", "lenet5-fp16-u8"):
                files = {"image": ("d.png", digit_png(pixels), "image/png")}
                answers[model] = requests.post(
                    f"{server.url}/classify", files=files, data={"model": model}, timeout=30
                ).json()["predictions"]
                assert answers[model][0]["label"] == str(label), model
            top, top_fp16 = answers["lenet5"][0]["score"], answers["lenet5-fp16-u8"][0]["score"]
            assert abs(top - top_fp16) <= 1e-2
            fp16_scores += [p["score"] for p in answers["lenet5-fp16-u8"]]
        fp16_valued = [s for s in fp16_scores if float(np.float16(s)) == s]
        assert len(fp16_valued) <= len(fp16_scores) // 2, fp16_valued  # an fp16 output made every one of them so
    finally:
        stop_server(server)
