"""The held-out shapes generator as a specification: seeded, truthful labels, different from the training one; and
the shipped shapes demos' figures on it (the README's).

``export/demos/shapes_heldout.py`` draws circles, squares and triangles its own way (NumPy rasterisation, other
backgrounds, sizes, colours and degradations, each scene at its own size) so that the demos can be judged on scenes
their training generator never made.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cnnserve.export.demos.shapes import CLASSES, HELD_OUT_SEED, make_dataset
from cnnserve.export.demos.shapes_heldout import _held_out, make_held_out, resize_sample
from cnnserve.export.weights import load_demo
from cnnserve.models import build_model, get_spec

# The shipped weights (trained on the classic and randomised generators) on make_held_out(300, seed=HELD_OUT_SEED)
# and on its plain set make_simple_held_out(300, seed=HELD_OUT_SEED) — the README's figures. Issue 19's goals (YOLO
# recall@0.5 ≥ 0.8 with mAP@0.5 ≥ 0.7, U-Net mean IoU ≥ 0.8) hold on both sets for the served detector and the U-Net;
# yolov1_shapes, v1's fully connected head, meets them on the plain set only.
YOLO_HELD_OUT = {"map50": 0.6532, "recall50": 0.6235, "precision50": 0.8008}
# The served detector, yolov1_shapes_conv (a convolutional head at 256², eight views averaged, its default
# score_threshold 0.15).
CONV_HELD_OUT = {"map50": 0.8439, "recall50": 0.8039, "precision50": 0.8537}
CONV_PLAIN = {"map50": 0.9921, "recall50": 0.9856, "precision50": 0.9932}
UNET_HELD_OUT_MIOU = 0.8090
YOLO_PLAIN = {"map50": 0.8659, "recall50": 0.8678, "precision50": 0.8771}
UNET_PLAIN_MIOU = 0.9600


def test_a_scene_is_its_seed() -> None:
    first, other = make_held_out(4, seed=5), make_held_out(4, seed=6)
    fresh = _held_out.__wrapped__(4, 5)  # drawn again, not from the per-process cache
    for a, b in zip(first, fresh, strict=True):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
        assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.labels, b.labels)
    assert not all(np.array_equal(a.image, c.image) for a, c in zip(first, other, strict=True))


def test_masks_and_boxes_describe_the_drawn_shapes() -> None:
    for sample in make_held_out(12, seed=5):
        height, width = sample.mask.shape
        assert sample.image.shape == (height, width, 3) and sample.image.dtype == np.uint8
        assert len(sample.boxes) == len(sample.labels) >= 1
        assert set(np.unique(sample.mask).tolist()) <= {0, *sample.labels.tolist()}
        assert set(sample.labels.tolist()) <= set(range(1, len(CLASSES)))
        for box, label in zip(sample.boxes.astype(int), sample.labels, strict=True):
            x1, y1, x2, y2 = box
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
            inside = sample.mask[y1:y2, x1:x2] == label
            # The box is the tight extent of the object's visible pixels: each edge row and column holds some.
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()


def test_held_out_scenes_come_at_their_own_sizes_and_resize_like_uploads() -> None:
    held_out = make_held_out(12, seed=5)
    sizes = {s.image.shape[:2] for s in held_out}
    assert len(sizes) == len(held_out)  # every scene its own size and aspect
    assert all(min(size) >= 64 for size in sizes) and any(h != w for h, w in sizes)
    small = resize_sample(held_out[0], (128, 128))
    scale = np.array([128 / held_out[0].image.shape[1], 128 / held_out[0].image.shape[0]] * 2, np.float32)
    assert small.image.shape == (128, 128, 3) and small.mask.shape == (128, 128)
    np.testing.assert_allclose(small.boxes, held_out[0].boxes * scale)


def test_the_held_out_scenes_are_not_the_training_scenes() -> None:
    train = make_dataset(30, seed=HELD_OUT_SEED)
    held = [resize_sample(s, (128, 128)) for s in make_held_out(30, seed=HELD_OUT_SEED)]
    assert not any(np.array_equal(a.image, b.image) for a, b in zip(train, held, strict=True))
    assert {s.image.shape for s in train} == {(128, 128, 3)}  # the training generator draws at the input size


def _shipped(name: str) -> torch.nn.Module:
    """A demo with the weights the repository ships, loaded as the exporter loads them (``load_demo``)."""
    model = build_model(name).eval()
    model.load_state_dict(load_demo(get_spec(name))[0], strict=True)
    return model


def test_shipped_shapes_demos_on_the_held_out_generator() -> None:
    """The README's held-out figures are what the shipped weights measure: issue 19's goals hold for the served
    detector and the U-Net on both sets, and for v1's head on the plain set (the kind the issue reported failing)."""
    import cnnserve.models.unet  # noqa: F401
    import cnnserve.models.yolo  # noqa: F401
    from cnnserve.export.demos.unet_shapes import evaluate_held_out as unet_held_out
    from cnnserve.export.demos.yolo_shapes import evaluate_held_out as yolo_held_out

    yolo = _shipped("yolov1_shapes")
    measured = yolo_held_out(yolo)
    for key, value in YOLO_HELD_OUT.items():
        assert measured[key] == pytest.approx(value, abs=1e-3), (key, measured)
    plain = yolo_held_out(yolo, name="held_out_simple")
    for key, value in YOLO_PLAIN.items():
        assert plain[key] == pytest.approx(value, abs=1e-3), (key, plain)
    assert plain["recall50"] >= 0.8 and plain["map50"] >= 0.7
    conv = _shipped("yolov1_shapes_conv")
    for name, expected in (("held_out", CONV_HELD_OUT), ("held_out_simple", CONV_PLAIN)):
        measured = yolo_held_out(conv, name=name)
        for key, value in expected.items():
            assert measured[key] == pytest.approx(value, abs=1e-3), (name, key, measured)
        assert measured["recall50"] >= 0.8 and measured["map50"] >= 0.7
    unet = _shipped("unet")
    with torch.no_grad():
        held_out_miou = unet_held_out(unet)["mean_iou"]
        assert held_out_miou == pytest.approx(UNET_HELD_OUT_MIOU, abs=1e-3) and held_out_miou >= 0.8
        plain_miou = unet_held_out(unet, name="held_out_simple")["mean_iou"]
    assert plain_miou == pytest.approx(UNET_PLAIN_MIOU, abs=1e-3) and plain_miou >= 0.8
