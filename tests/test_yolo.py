"""YOLO v1 as a specification: the paper's layer counts and output tensor, the target encoding and decoding, the
loss, the ONNX graph with its in-graph NMS and threshold inputs, and the shipped shapes demo's mAP@0.5."""

from __future__ import annotations

from pathlib import Path

import cnnserve.export.yolo  # noqa: F401  (registers the "yolo" export until export/wrappers.py lists it)
import cnnserve.models.yolo  # noqa: F401  (registers the YOLO names until models/registry.py lists the family)
import numpy as np
import onnxruntime as ort
import pytest
import torch
from cnnserve.export import export_model
from cnnserve.export.demos.shapes import HELD_OUT_SEED, make_dataset
from cnnserve.export.demos.yolo_shapes import (
    CONV_MODEL,
    EVAL_IMAGES,
    MODEL,
    average_precision,
    evaluate,
    load_backbone,
    mean_average_precision,
    shapes_batch,
    train_yolo_shapes,
    train_yolo_shapes_conv,
)
from cnnserve.export.weights import DEMO_WEIGHTS_DIR, load_demo
from cnnserve.export.yolo import YoloExport
from cnnserve.models.yolo import YoloConvHead, decode, encode_targets, symmetry_average, yolo_loss
from safetensors.torch import load_file

from cnnserve import models

S, B, C = 8, 2, 3  # yolov1_shapes; yolov1_shapes_conv has a 16×16 grid
SIZE = (128, 128)
# Two objects in different cells: a wide box and a tall one touching the bottom-right corner.
BOXES = torch.tensor([[10.0, 20.0, 50.0, 40.0], [70.0, 64.0, 120.0, 128.0]])
LABELS = torch.tensor([2, 0])


def _convs(model: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def _perfect_prediction(target: torch.Tensor) -> torch.Tensor:
    """(S, S, 5 + C) target → (1, S, S, B·5 + C): box 0 is the truth with confidence 1, box 1 is empty."""
    pred = torch.zeros(1, S, S, B * 5 + C)
    pred[0, ..., 0:5] = target[..., 0:5]
    pred[0, ..., B * 5 :] = target[..., 5:]
    return pred


def _demo(name: str = MODEL) -> tuple[torch.nn.Module, dict]:
    """A shipped demo, as the exporter loads it (``load_demo``): the model with its weights, and their record."""
    state, record = load_demo(models.get_spec(name))
    model = models.build_model(name).eval()
    model.load_state_dict(state, strict=True)
    return model, record


def _scenes(name: str, n: int, seed: int) -> torch.Tensor:
    """Classic scenes as the input batch of the shapes demo ``name`` (each at its own input size)."""
    return torch.from_numpy(shapes_batch(make_dataset(n, seed=seed), models.get_spec(name).input_size))


# --- the architecture --------------------------------------------------------------------------------------


def test_registry_knows_the_yolo_family() -> None:
    assert {"yolov1", "yolov1_tiny", MODEL} <= set(models.list_models(task="detection"))
    spec = models.get_spec("yolov1")
    assert (spec.family, spec.input_size, spec.num_classes) == ("yolo", (448, 448), 20)
    assert spec.labels[0] == "aeroplane" and spec.labels[-1] == "tvmonitor"
    assert models.get_spec(MODEL).labels == ("circle", "square", "triangle")


@pytest.mark.parametrize(("name", "convs"), [("yolov1", 24), ("yolov1_tiny", 9), (MODEL, 9)])
def test_conv_layer_counts_and_two_fully_connected_layers(name: str, convs: int) -> None:
    with torch.device("meta"):
        model = models.build_model(name)
    assert _convs(model) == convs
    assert sum(isinstance(m, torch.nn.Linear) for m in model.modules()) == 2


def test_the_convolutional_head_reads_every_cell_with_the_same_weights() -> None:
    torch.manual_seed(0)
    model = models.build_model(CONV_MODEL).eval()
    assert _convs(model) == 10 and not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert isinstance(model.head, YoloConvHead)
    assert (model.image_size, model.grid) == (256, 16)  # the darknet's stride 16 on a 256² input
    images = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        out = model(images)
        assert out.shape == (2, 16, 16, B * 5 + C)
        # Cell (r, c) is the head's 1×1 read of feature column (r, c): the same weights everywhere.
        features = model.head.block(model.features(images))  # (N, 256, 16, 16)
        by_hand = torch.einsum("nkrc,ok->nrco", features, model.head.out.weight[:, :, 0, 0]) + model.head.out.bias
    torch.testing.assert_close(out, by_hand, rtol=1e-4, atol=1e-4)
    # The FC head would take any feature side; a convolutional one answers one cell per feature.
    with pytest.raises(ValueError, match="must equal the grid"):
        models.build_model(CONV_MODEL, grid=7)


def _cells(pred: torch.Tensor, grid: int = 16, size: int = 256) -> tuple[torch.Tensor, ...]:
    """Decoded boxes, scores and labels per cell and predictor: (S, S, B, 4), (S, S, B), (S, S, B) of image 0."""
    boxes, scores, labels = decode(pred, S=grid, B=B, C=C, image_size=(size, size))
    return boxes[0].view(grid, grid, B, 4), scores[0].view(grid, grid, B), labels[0].view(grid, grid, B)


def test_averaged_views_answer_for_the_scene_not_for_the_view() -> None:
    """Over the eight symmetries of the square, ``symmetry_average`` gives a mirrored or transposed image the same
    boxes, mirrored or transposed, in the mirrored or transposed cells; one view of a net with random weights does
    not (no net is symmetric by itself)."""
    torch.manual_seed(0)
    model = models.build_model(CONV_MODEL).eval()
    image = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        assert torch.equal(symmetry_average(model, image, 1), model(image))
        base = _cells(symmetry_average(model, image, 8))
        mirrored = _cells(symmetry_average(model, image.flip(-1), 8))
        transposed = _cells(symmetry_average(model, image.transpose(-1, -2), 8))
        one_view = _cells(model(image)), _cells(model(image.flip(-1)))
    boxes, scores, labels = (t.flip(1) for t in mirrored)  # cell (r, c) of the mirror image is cell (r, S − 1 − c)
    back = torch.stack((256 - boxes[..., 2], boxes[..., 1], 256 - boxes[..., 0], boxes[..., 3]), -1)
    torch.testing.assert_close(back, base[0], atol=1e-3, rtol=0)
    torch.testing.assert_close(scores, base[1], atol=1e-5, rtol=0)
    assert torch.equal(labels, base[2])
    boxes, scores, labels = (t.transpose(0, 1) for t in transposed)
    torch.testing.assert_close(boxes[..., [1, 0, 3, 2]], base[0], atol=1e-3, rtol=0)
    torch.testing.assert_close(scores, base[1], atol=1e-5, rtol=0)
    assert torch.equal(labels, base[2])
    boxes = one_view[1][0].flip(1)
    boxes = torch.stack((256 - boxes[..., 2], boxes[..., 1], 256 - boxes[..., 0], boxes[..., 3]), -1)
    assert not torch.allclose(boxes, one_view[0][0], atol=1.0)  # one view: another answer for the mirror image
    with pytest.raises(ValueError, match="square"):
        symmetry_average(model, torch.rand(1, 3, 256, 128), 8)
    with pytest.raises(ValueError, match="views must be one of"):
        models.build_model(CONV_MODEL, views=3)


def test_the_conv_trainer_starts_from_yolov1_shapes_darknet(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = models.build_model(CONV_MODEL)
    record = load_backbone(model, DEMO_WEIGHTS_DIR / f"{MODEL}.safetensors")
    darknet = load_file(str(DEMO_WEIGHTS_DIR / f"{MODEL}.safetensors"))
    own = model.state_dict()
    copied = [k for k in own if k.startswith("features.")]
    assert len(copied) == 48 and all(torch.equal(own[k], darknet[k]) for k in copied)
    assert "features.11.conv.weight" in darknet and "features.11.conv.weight" not in own  # the FC head's 1×1 stays
    assert record.startswith("darknet layers (48 tensors) from yolov1_shapes.safetensors (sha256 ")
    # A file that is not this darknet is refused, naming what does not fit.
    from safetensors.torch import save_file

    wrong = {k: v for k, v in darknet.items() if k != "features.4.conv.weight"}
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(ValueError, match=r"features\.4\.conv\.weight missing"):
        load_backbone(model, tmp_path / "wrong.safetensors")


def test_yolov1_output_is_7x7x30_for_voc() -> None:
    with torch.device("meta"):  # 272 M parameters: shapes only
        model = models.build_model("yolov1").eval()
        out = model(torch.empty(2, 3, 448, 448))
    assert out.shape == (2, 7, 7, 2 * 5 + 20)
    with torch.device("meta"):
        out = models.build_model("yolov1", grid=5, boxes=3, num_classes=4).eval()(torch.empty(1, 3, 448, 448))
    assert out.shape == (1, 5, 5, 3 * 5 + 4)


def test_fast_yolo_takes_a_configurable_input_size() -> None:
    model = models.build_model("yolov1_tiny", image_size=128).eval()
    with torch.no_grad():
        assert model(torch.rand(3, 3, 128, 128)).shape == (3, 7, 7, 30)
    with pytest.raises(ValueError, match="multiple of the darknet's stride 64"):
        models.build_model("yolov1_tiny", image_size=100)


# --- encode, decode, loss ------------------------------------------------------------------------------------


def test_encode_puts_each_box_in_the_cell_of_its_centre() -> None:
    target = encode_targets(BOXES, LABELS, S=S, C=C, image_size=SIZE)
    assert target.shape == (S, S, 5 + C)
    assert target[..., 4].nonzero().tolist() == [[1, 1], [6, 5]]  # centres (30, 30) and (95, 96) / 16 px
    torch.testing.assert_close(
        target[1, 1], torch.tensor([0.875, 0.875, 0.5590, 0.3953, 1, 0, 0, 1]), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(target[6, 5, 5:], torch.tensor([1.0, 0, 0]))


def test_decode_of_an_encoded_target_recovers_the_boxes() -> None:
    pred = _perfect_prediction(encode_targets(BOXES, LABELS, S=S, C=C, image_size=SIZE))
    boxes, scores, labels = decode(pred, S=S, B=B, C=C, image_size=SIZE)
    assert boxes.shape == (1, S * S * B, 4) and scores.shape == labels.shape == (1, S * S * B)
    found = scores[0] > 0.5
    assert found.sum() == 2 and scores[0][~found].max() == 0
    torch.testing.assert_close(boxes[0][found], BOXES, atol=1e-4, rtol=0)
    assert labels[0][found].tolist() == LABELS.tolist()


def test_decode_scores_are_class_probability_times_confidence() -> None:
    pred = torch.zeros(1, S, S, B * 5 + C)
    pred[0, 3, 4, 0:5] = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.8])  # box 0 of cell (row 3, col 4)
    pred[0, 3, 4, 5:10] = torch.tensor([0.5, 0.5, 0.25, 0.25, 0.4])  # box 1 of the same cell
    pred[0, 3, 4, 10:] = torch.tensor([0.1, 0.7, 0.2])
    boxes, scores, labels = decode(pred, S=S, B=B, C=C, image_size=(128, 256))  # H=128, W=256
    first = (3 * S + 4) * B
    torch.testing.assert_close(scores[0, first : first + 2], torch.tensor([0.7 * 0.8, 0.7 * 0.4]))
    assert labels[0, first : first + 2].tolist() == [1, 1]
    # centre (4.5 / 8 · 256, 3.5 / 8 · 128) = (144, 56); size 0.5² · (256, 128) = (64, 32)
    torch.testing.assert_close(boxes[0, first], torch.tensor([112.0, 40.0, 176.0, 72.0]))


def test_loss_is_zero_for_a_perfect_prediction_and_positive_otherwise() -> None:
    target = encode_targets(BOXES, LABELS, S=S, C=C, image_size=SIZE)[None]
    pred = _perfect_prediction(target[0])
    assert yolo_loss(pred, target, S=S, B=B, C=C).item() == 0.0
    for index, what in ((0, "x"), (3, "sqrt h"), (4, "confidence"), (9, "box 1's confidence"), (11, "a class")):
        wrong = pred.clone()
        wrong[0, 6, 5, index] += 0.2
        assert yolo_loss(wrong, target, S=S, B=B, C=C).item() > 0, what


def test_the_lambda_weights_matter() -> None:
    target = encode_targets(BOXES, LABELS, S=S, C=C, image_size=SIZE)[None]
    pred = _perfect_prediction(target[0])
    off_box = pred.clone()
    off_box[0, 1, 1, 0] += 0.2  # x of the responsible box: (0.2)² weighted by λcoord (its IoU term is not)
    by_lambda = {lam: yolo_loss(off_box, target, S=S, B=B, C=C, lambda_coord=lam).item() for lam in (1.0, 5.0)}
    assert by_lambda[5.0] - by_lambda[1.0] == pytest.approx(4 * 0.2**2)
    empty_cell = pred.clone()
    empty_cell[0, 0, 0, 4] = 1.0  # confident box in a cell with no object: 0.5 · 1²
    assert yolo_loss(empty_cell, target, S=S, B=B, C=C).item() == pytest.approx(0.5)
    assert yolo_loss(empty_cell, target, S=S, B=B, C=C, lambda_noobj=1.0).item() == pytest.approx(1.0)


def test_the_confidence_target_is_the_iou_or_one() -> None:
    target = encode_targets(BOXES, LABELS, S=S, C=C, image_size=SIZE)[None]
    pred = _perfect_prediction(target[0])
    shifted = pred.clone()
    shifted[0, 1, 1, 0] += 0.1  # the responsible box moves a tenth of a cell: IoU < 1, its confidence still 1
    coordinates = 5.0 * 0.1**2
    by_iou = yolo_loss(shifted, target, S=S, B=B, C=C).item()
    by_one = yolo_loss(shifted, target, S=S, B=B, C=C, confidence_target="one").item()
    assert by_one == pytest.approx(coordinates)  # confidence 1 is what "one" asks for
    assert by_iou > by_one + 1e-4  # the paper's target is the IoU, below 1: its confidence is pulled down
    with pytest.raises(ValueError, match="confidence_target"):
        yolo_loss(pred, target, S=S, B=B, C=C, confidence_target="iou2")


def test_the_responsible_box_is_the_one_with_the_best_iou() -> None:
    target = encode_targets(BOXES, LABELS, S=S, C=C, image_size=SIZE)[None]
    pred = _perfect_prediction(target[0])
    swapped = pred.clone()  # the truth in box 1 (confidence 1), box 0 empty: still a perfect prediction
    swapped[0, 1, 1, 5:10], swapped[0, 1, 1, 0:5] = pred[0, 1, 1, 0:5], 0.0
    assert yolo_loss(swapped, target, S=S, B=B, C=C).item() == 0.0


# --- the ONNX graph ----------------------------------------------------------------------------------------


def _onnx_detections(session: ort.InferenceSession, images: torch.Tensor, score: float, iou: float) -> list:
    feed = {
        "images": images.numpy(),
        "score_threshold": np.array(score, dtype=np.float32),
        "iou_threshold": np.array(iou, dtype=np.float32),
    }
    return session.run(None, feed)


@pytest.fixture(scope="module", params=[MODEL, CONV_MODEL])
def demo_onnx(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """Both shapes demos exported: v1's fully connected head and the convolutional one."""
    path = tmp_path_factory.mktemp("yolo") / f"{request.param}.onnx"
    result = export_model(request.param, weights="demo", save=False, output=path)
    assert result.parity <= 1e-3 and result.source == "demo:synthetic-shapes"
    return request.param, path


def test_exported_graph_declares_the_detection_contract(demo_onnx: tuple[str, Path]) -> None:
    session = ort.InferenceSession(str(demo_onnx[1]), providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}
    assert list(inputs) == ["images", "score_threshold", "iou_threshold"]
    assert inputs["score_threshold"].shape == [] and inputs["iou_threshold"].shape == []
    assert [o.name for o in session.get_outputs()] == ["boxes", "scores", "labels", "num_detections"]


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_matches_pytorch_on_scenes_with_detections(demo_onnx: tuple[str, Path], batch: int) -> None:
    name, path = demo_onnx
    model, _ = _demo(name)
    wrapped = YoloExport(model, models.get_spec(name)).eval()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = _scenes(name, batch, seed=777)
    counts = {}
    # 0.001: the demo is sure of these classic scenes; it scores few boxes under 0.25, and at 0.01 none of them
    # overlaps another by between 0.45 and 0.9 (so the NMS threshold would change nothing there). The convolutional
    # demo's 512 predictors keep more than max_detections (100) at 0.001, so the counts would be equal; 0.005.
    low = 0.001 if name == MODEL else 0.005
    for score, iou in ((0.25, 0.45), (low, 0.45), (low, 0.9), (0.9, 0.45)):
        got = _onnx_detections(session, images, score, iou)
        with torch.no_grad():
            expected = [t.numpy() for t in wrapped(images, torch.tensor(score), torch.tensor(iou))]
        assert [g.shape for g in got] == [(batch, 100, 4), (batch, 100), (batch, 100), (batch,)]
        assert got[2].dtype == got[3].dtype == np.int64
        for g, e in zip(got, expected, strict=True):
            assert np.abs(g.astype(np.float64) - e).max() <= 1e-3
        counts[(score, iou)] = int(got[3].sum())
    assert counts[(0.25, 0.45)] >= batch  # every scene has at least one shape, and the model finds them
    # The thresholds are graph inputs: a lower score threshold and a laxer NMS keep more, a higher one fewer.
    assert counts[(low, 0.9)] > counts[(low, 0.45)] > counts[(0.25, 0.45)] > counts[(0.9, 0.45)]


def test_padded_rows_are_zeros(demo_onnx: tuple[str, Path]) -> None:
    session = ort.InferenceSession(str(demo_onnx[1]), providers=["CPUExecutionProvider"])
    images = _scenes(demo_onnx[0], 2, seed=778)
    boxes, scores, labels, counts = _onnx_detections(session, images, 0.25, 0.45)
    for i, n in enumerate(counts):
        assert (scores[i, :n] > 0.25).all() and (np.diff(scores[i, :n]) <= 0).all()  # best first
        assert not boxes[i, n:].any() and not scores[i, n:].any() and not labels[i, n:].any()


def test_an_iou_threshold_outside_0_1_is_clamped_not_an_error(demo_onnx: tuple[str, Path]) -> None:
    session = ort.InferenceSession(str(demo_onnx[1]), providers=["CPUExecutionProvider"])
    images = _scenes(demo_onnx[0], 2, seed=779)
    for outside, inside in ((1.5, 1.0), (-0.5, 0.0)):
        got, expected = (_onnx_detections(session, images, 0.05, iou) for iou in (outside, inside))
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_array_equal(g, e)


@pytest.mark.slow
def test_yolov1_exports_at_448_with_random_weights(tmp_path: Path) -> None:
    result = export_model("yolov1", weights="random", save=False, output=tmp_path / "yolov1.onnx", seed=0)
    assert result.parity <= 1e-3
    torch.manual_seed(0)  # the exporter's seeded "random" weights
    wrapped = YoloExport(models.build_model("yolov1").eval(), models.get_spec("yolov1")).eval()
    session = ort.InferenceSession(str(tmp_path / "yolov1.onnx"), providers=["CPUExecutionProvider"])
    images = torch.rand(1, 3, 448, 448, generator=torch.Generator().manual_seed(1))
    got = _onnx_detections(session, images, 0.0, 0.45)  # threshold 0: random weights still give detections
    with torch.no_grad():
        expected = [t.numpy() for t in wrapped(images, torch.tensor(0.0), torch.tensor(0.45))]
    assert got[0].shape == (1, 100, 4) and got[3][0] > 0
    for g, e in zip(got, expected, strict=True):
        assert np.abs(g.astype(np.float64) - e).max() <= 1e-3


# --- the shapes demo ---------------------------------------------------------------------------------------


def test_average_precision_is_the_voc_all_point_area() -> None:
    # Ranked hits: ✓ ✗ ✓ with 2 truths → precision envelope 1 up to recall ½, ⅔ up to recall 1.
    assert average_precision(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])) == pytest.approx(0.5 + 1 / 3)
    truth = [(np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32), np.array([0, 1]))]
    exact = [(truth[0][0], np.array([0.9, 0.8]), np.array([0, 1]))]
    assert mean_average_precision(exact, truth)["map"] == 1.0
    shifted = [(truth[0][0] + 4, np.array([0.9, 0.8]), np.array([0, 1]))]  # IoU 36/164 < 0.5
    assert mean_average_precision(shifted, truth)["map"] == 0.0
    swapped = [(truth[0][0], np.array([0.9, 0.8]), np.array([1, 0]))]  # right boxes, wrong classes
    assert mean_average_precision(swapped, truth)["map"] == 0.0


@pytest.mark.parametrize("name", [MODEL, CONV_MODEL])
def test_shipped_demo_reaches_map50_of_0_7_on_fresh_held_out_scenes(name: str) -> None:
    model, record = _demo(name)
    size = (model.image_size, model.image_size)  # the classic generator draws at the input size
    result = evaluate(model, make_dataset(record["eval_images"], size=size, seed=HELD_OUT_SEED))
    assert result["map"] >= 0.7
    assert result["map"] == pytest.approx(record["map50"], abs=1e-3)  # the recorded number is this one
    assert record["eval_images"] >= 200 and record["dataset"] == "synthetic-shapes"


def test_the_conv_demo_averages_eight_views_at_its_own_default_threshold() -> None:
    """The served detector's figures are at its export's default score_threshold, with the views its export
    averages: the record, the model and the export say the same."""
    from cnnserve.export.demos.yolo_shapes import operating_threshold
    from cnnserve.export.wrappers import export_for

    conv, record = _demo(CONV_MODEL)
    default = export_for(models.get_spec(CONV_MODEL)).extra_inputs["score_threshold"]
    assert conv.views == record["views"] == 8 and YoloExport(conv, models.get_spec(CONV_MODEL)).views == 8
    assert record["operating_score_threshold"] == operating_threshold(conv) == default == 0.15
    v1, v1_record = _demo(MODEL)
    assert v1.views == 1 and operating_threshold(v1) == v1_record["operating_score_threshold"] == 0.25


@pytest.mark.slow
def test_training_reproduces_the_demo(tmp_path: Path) -> None:
    record = train_yolo_shapes(tmp_path, eval_images=EVAL_IMAGES, log=lambda _: None)
    assert record["map50"] >= 0.7
    model = models.build_model(MODEL).eval()
    model.load_state_dict(load_file(str(tmp_path / f"{MODEL}.safetensors")), strict=True)
    held_out = make_dataset(EVAL_IMAGES, size=SIZE, seed=HELD_OUT_SEED)
    assert evaluate(model, held_out)["map"] == pytest.approx(record["map50"], abs=1e-3)


@pytest.mark.slow
def test_training_reproduces_the_conv_demo(tmp_path: Path) -> None:
    """One command from the shipped darknet gives the shipped yolov1_shapes_conv, tensor for tensor."""
    record = train_yolo_shapes_conv(tmp_path, log=lambda _: None)
    expected, shipped = load_demo(models.get_spec(CONV_MODEL))
    assert {k: v for k, v in record.items() if k != "seconds"} == {k: v for k, v in shipped.items() if k != "seconds"}
    trained = load_file(str(tmp_path / f"{CONV_MODEL}.safetensors"))
    assert trained.keys() == expected.keys() and all(torch.equal(trained[k], expected[k]) for k in expected)


def test_the_conv_trainer_runs_the_stages_after_an_earlier_run(tmp_path: Path, monkeypatch) -> None:
    """The shipped yolov1_shapes_conv is stage 6 run on the weights of a stage-5 run: that must give the weights of
    one run of both stages, tensor for tensor, and stage 6 pulls confidences to 1 (tiny stages, few scenes)."""
    from cnnserve.export.demos import shapes_eval
    from cnnserve.export.demos import yolo_shapes as ys

    monkeypatch.setattr(ys, "TRAIN_IMAGES", 16)  # the classic scenes of each batch
    monkeypatch.setattr(shapes_eval, "watch_sets", lambda size, n=100: {"held_out": shapes_eval.test_set(
        "held_out", 4, size, seed=shapes_eval.VALIDATION_SEED)})  # fmt: skip
    short = {5: shapes_eval.StageLength(2, 16, 1e-3), 6: shapes_eval.StageLength(2, 16, 5e-4)}
    options = {"eval_images": 4, "eval_every": 2, "workers": 1, "log": lambda _: None}
    whole = train_yolo_shapes_conv(tmp_path / "whole", stages=short, **options)
    first = train_yolo_shapes_conv(
        tmp_path / "first", stages={**short, 6: shapes_eval.StageLength(0, 16, 5e-4)}, **options
    )
    assert first["stage6"] == "none"
    rest = train_yolo_shapes_conv(
        tmp_path / "rest", stages=short, after=tmp_path / "first" / f"{CONV_MODEL}.safetensors", **options
    )
    assert rest["backbone"] == whole["backbone"] and rest["stage5"] == first["stage5"] == whole["stage5"]
    assert rest["stage6"] == whole["stage6"] and "confidence target 1" in rest["stage6"]
    assert "confidence target" not in rest["stage5"]
    one_run = load_file(str(tmp_path / "whole" / f"{CONV_MODEL}.safetensors"))
    resumed = load_file(str(tmp_path / "rest" / f"{CONV_MODEL}.safetensors"))
    stage5 = load_file(str(tmp_path / "first" / f"{CONV_MODEL}.safetensors"))
    assert all(torch.equal(one_run[k], resumed[k]) for k in one_run)
    assert not all(torch.equal(stage5[k], resumed[k]) for k in stage5)  # stage 6 did run


def test_recall_and_precision_at_one_operating_point() -> None:
    from cnnserve.export.demos.yolo_shapes import recall_precision

    truth = [(np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32), np.array([0, 1]))]
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [50, 50, 60, 60]], np.float32)
    scores, labels = np.array([0.9, 0.8, 0.3, 0.6]), np.array([0, 0, 0, 1])
    # 0.9 finds the first box; 0.8 is a duplicate of it; 0.3 has the wrong class; 0.6 is nowhere.
    at = recall_precision([(boxes, scores, labels)], truth, score_threshold=0.25)
    assert (at["recall"], at["precision"], at["truths"], at["detections"]) == (0.5, 0.25, 2, 4)
    high = recall_precision([(boxes, scores, labels)], truth, score_threshold=0.85)
    assert (high["recall"], high["precision"]) == (0.5, 1.0)
