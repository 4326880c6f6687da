"""Faster R-CNN and Mask R-CNN as a specification: torchvision's COCO checkpoints load strictly, and the exported
ONNX file finds what torchvision's own eager model finds, box for box and mask for mask.

The ONNX side runs the way the service runs: the upload is resized to ``service.imaging.detection_resize_size``
(torchvision's arithmetic; the pixels come from the same bilinear interpolation torchvision uses, so both models see
the same image), the answer's boxes are mapped back to the upload with ``service.tasks.detect.scale_boxes`` and its
28×28 masks are pasted with ``service.masks.paste_masks``. torchvision resizes and pastes inside its model.

No COCO weights can be downloaded here. When the published checkpoint is in the torch hub cache the tests use it;
otherwise seeded random weights made *lively* (:func:`make_lively`) give dozens of detections with spread scores.
Plain random initialisation would prove nothing: no score reaches 0.05, or every proposal is the whole image.
The fast suite compares one image at a small size (shorter side 320); ``slow`` runs all three images at
torchvision's full 800/1333 and exports with ``--weights random``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import skimage.data
import torch
import torch.nn.functional as F
import torchvision
from cnnserve.export.onnx import read_metadata
from cnnserve.export.pipeline import export_model
from cnnserve.export.rcnn import detection_parity
from cnnserve.export.weights import apply_state_dict, torchvision_checkpoint_path
from cnnserve.models.rcnn import FasterRCNN, adapt_state_dict, freeze_batch_norm
from cnnserve.service.imaging import detection_resize_size
from cnnserve.service.masks import paste_masks
from cnnserve.service.tasks.detect import scale_boxes
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import box_iou
from torchvision.ops.misc import FrozenBatchNorm2d

from cnnserve import models

NAMES = ("fasterrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn")
IMAGES = ("astronaut", "coffee", "chelsea")
SMALL = (320, 512)  # (min_size, max_size): the fast suite's resize
FULL = (800, 1333)  # torchvision's
IOU_MIN, SCORE_TOL, MASK_IOU_MIN = 0.99, 1e-3, 0.95
# Only detections clearly inside both cut-offs (score threshold, detections_per_img) must match: one scoring within
# float noise of a cut-off may fall on either side of it.
MARGIN = 0.01


def uses_checkpoint(name: str) -> bool:
    return torchvision_checkpoint_path(models.get_spec(name))[1].is_file()


def upload(name: str) -> torch.Tensor:
    """A real photograph as float32 [3, H, W] in [0, 1]."""
    return torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1).float() / 255.0


def resized(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The model input, [1, 3, h, w]: the shared size arithmetic, torchvision's interpolation."""
    hw = detection_resize_size(*image.shape[-2:], *size)
    return F.interpolate(image[None], size=hw, mode="bilinear", align_corners=False).clamp(0.0, 1.0)


def normalised(images: torch.Tensor) -> torch.Tensor:
    spec = models.get_spec(NAMES[0])
    return (images - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)


def torchvision_model(name: str, *, size: tuple[int, int], checkpoint: bool = False) -> torch.nn.Module:
    """torchvision's eager model as its COCO builder makes it: frozen batch norm with eps 0 in the backbone."""
    builder: Callable[..., torch.nn.Module] = getattr(torchvision.models.detection, name)
    if checkpoint:
        weights = torchvision.models.get_weight(models.get_spec(name).torchvision_weights)
        return builder(weights=weights, min_size=size[0], max_size=size[1]).eval()
    model = builder(weights=None, weights_backbone=None, min_size=size[0], max_size=size[1])
    freeze_batch_norm(model.backbone.body, eps=0.0)
    return model.eval()


# Trained-model-like spreads of the heads' outputs, stage by stage: a head's inputs depend on the stages before it
# (the RPN decides the box head's proposals, the box head the mask head's boxes).
LIVELY_SPREADS = (
    {"rpn.head.cls_logits": 3.0, "rpn.head.bbox_pred": 0.2},
    {"roi_heads.box_predictor.cls_score": 2.5, "roi_heads.box_predictor.bbox_pred": 1.0},
    {"roi_heads.mask_predictor.mask_fcn_logits": 2.0},
)


def make_lively(
    model: FasterRCNN,
    images: torch.Tensor,
    *,
    stages: tuple[dict[str, float], ...] = LIVELY_SPREADS,
    batch_norm: bool = True,
    seed: int = 0,
) -> None:
    """Data-dependent random weights (LSUV-style), so a random detector is numerically like a trained one.

    Every frozen batch norm takes the mean/variance of what it sees on ``images`` (with a random affine near the
    identity), and each head of ``stages`` is rescaled so its outputs have a trained model's spread (objectness
    logits std 3, RPN deltas 0.2, class logits 2.5, box deltas 1, mask logits 2). Without it activations grow to
    ~10³ through the random ResNet, decoded proposals all become the whole image and scores saturate at 1.0.
    ``batch_norm=False`` leaves the backbone alone (Mask R-CNN reusing Faster R-CNN's lively weights).
    """
    generator = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())

    def take_statistics(bn: FrozenBatchNorm2d, inputs: tuple[torch.Tensor]) -> None:
        (x,) = inputs
        bn.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        bn.running_var.copy_(x.var(dim=(0, 2, 3)) + 1e-3)
        bn.weight.copy_(0.75 + 0.5 * torch.rand(bn.weight.shape, generator=generator))
        bn.bias.copy_(0.1 * torch.randn(bn.bias.shape, generator=generator))

    hooks = []
    if stages and stages[0] is LIVELY_SPREADS[0]:
        hooks = [
            m.register_forward_pre_hook(take_statistics) for m in modules.values() if isinstance(m, FrozenBatchNorm2d)
        ]
    for spreads in stages:
        outputs: dict[str, list[torch.Tensor]] = {key: [] for key in spreads if key in modules}
        if not outputs:
            continue  # Faster R-CNN has no mask head
        for key, seen in outputs.items():
            hooks.append(modules[key].register_forward_hook(lambda m, i, o, seen=seen: seen.append(o)))
        with torch.no_grad():
            model.eval()(images)
            for key, seen in outputs.items():
                spread = torch.cat([o.flatten() for o in seen]).std()
                modules[key].weight.mul_(spreads[key] / spread)
                modules[key].bias.copy_(0.3 * spreads[key] * torch.randn(modules[key].bias.shape, generator=generator))
        for hook in hooks:
            hook.remove()
        hooks = []


def calibration_images() -> torch.Tensor:
    """A photograph and a noise image (normalised): lively weights must not saturate on the exporter's own random
    parity batch either."""
    size = models.get_spec(NAMES[0]).input_size
    photo = F.interpolate(upload("astronaut")[None], size=size, mode="bilinear", align_corners=False)
    noise = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(1))
    return normalised(torch.cat([photo, noise]))


@pytest.fixture(scope="module")
def lively() -> Callable[[str], dict[str, torch.Tensor]]:
    """Seeded lively weights per model, made once; Mask R-CNN takes Faster R-CNN's and livens its mask head."""
    cache: dict[str, dict[str, torch.Tensor]] = {}

    def get(name: str) -> dict[str, torch.Tensor]:
        if name not in cache:
            torch.manual_seed(0)
            model = models.build_model(name)
            if name == "maskrcnn_resnet50_fpn":
                model.load_state_dict(get("fasterrcnn_resnet50_fpn"), strict=False)
                make_lively(model, calibration_images(), stages=LIVELY_SPREADS[2:], batch_norm=False)
            else:
                make_lively(model, calibration_images())
            cache[name] = model.state_dict()
        return cache[name]

    return get


# --- one exported file per model, shared by the tests below -----------------------------------------------------


class Exported:
    """An exported model, the weights it holds, and how to build torchvision's eager twin with the same weights."""

    def __init__(self, name: str, path: Path, state: dict[str, torch.Tensor] | None, source: str) -> None:
        self.name, self.path, self.state, self.source = name, path, state, source
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def torchvision(self, size: tuple[int, int]) -> torch.nn.Module:
        model = torchvision_model(self.name, size=size, checkpoint=self.state is None)
        if self.state is not None:
            model.load_state_dict(self.state, strict=True)
        return model

    def run(self, images: torch.Tensor, score_threshold: float = 0.05, iou_threshold: float = 0.5) -> list[np.ndarray]:
        feed = {
            "images": images.numpy(),
            "score_threshold": np.array(score_threshold, dtype=np.float32),
            "iou_threshold": np.array(iou_threshold, dtype=np.float32),
        }
        return self.session.run(None, feed)

    def detect(self, image: torch.Tensor, size: tuple[int, int]) -> dict[str, np.ndarray]:
        """One upload → detections in the upload's pixels (masks pasted), as the service answers."""
        x = resized(image, size)
        outputs = dict(zip([o.name for o in self.session.get_outputs()], self.run(x), strict=True))
        n = int(outputs["num_detections"][0])
        height, width = image.shape[-2:]
        found = {
            "boxes": scale_boxes(outputs["boxes"][0, :n], tuple(x.shape[-2:]), (width, height)),
            "scores": outputs["scores"][0, :n],
            "labels": outputs["labels"][0, :n],
        }
        if "masks" in outputs:
            found["masks"] = paste_masks(outputs["masks"][0, :n], found["boxes"], height, width)
        return found


@pytest.fixture(scope="module")
def exported(
    tmp_path_factory: pytest.TempPathFactory, lively: Callable[[str], dict[str, torch.Tensor]]
) -> Callable[[str], Exported]:
    """Export lazily, once per model: the published checkpoint when cached, else lively random weights."""
    cache: dict[str, Exported] = {}

    def get(name: str) -> Exported:
        if name not in cache:
            folder = tmp_path_factory.mktemp(name)
            if uses_checkpoint(name):
                result = export_model(name, weights="torchvision", output=folder / "model.onnx", save=False)
                cache[name] = Exported(name, folder / "model.onnx", None, result.source)
            else:
                state = lively(name)
                torch.save(state, folder / "lively.pth")
                result = export_model(
                    name, weights=str(folder / "lively.pth"), output=folder / "model.onnx", save=False
                )
                cache[name] = Exported(name, folder / "model.onnx", state, result.source)
        return cache[name]

    return get


def comparable(scores: torch.Tensor | np.ndarray, cap: int = 100) -> float:
    """The score above which a detection must be found by both models (see MARGIN)."""
    floor = 0.05 + MARGIN
    if len(scores) >= cap:
        floor = max(floor, float(scores[cap - 1]) + MARGIN)
    return floor


def assert_same_detections(theirs: dict[str, torch.Tensor], ours: dict[str, np.ndarray]) -> int:
    """Every torchvision detection above the comparable score has its own twin in ours (same label, box IoU ≥ 0.99,
    |Δscore| ≤ 1e-3, mask IoU ≥ 0.95), and ours has nothing more above it. Returns how many matched."""
    floor = comparable(theirs["scores"])
    boxes, scores, labels = (torch.as_tensor(np.asarray(ours[k])) for k in ("boxes", "scores", "labels"))
    iou = box_iou(theirs["boxes"], boxes.float()) * (theirs["labels"][:, None] == labels[None, :])
    taken: set[int] = set()
    matched = 0
    for i in torch.nonzero(theirs["scores"] > floor).flatten().tolist():
        candidates = [
            j
            for j in torch.argsort(iou[i], descending=True).tolist()
            if j not in taken and iou[i, j] >= IOU_MIN and abs(float(scores[j] - theirs["scores"][i])) <= SCORE_TOL
        ]
        assert candidates, (
            f"torchvision's detection {i} (label {int(theirs['labels'][i])}, score {float(theirs['scores'][i]):.4f}, "
            f"box {theirs['boxes'][i].tolist()}) has no twin; best IoU {float(iou[i].max()):.4f}"
        )
        j = candidates[0]
        taken.add(j)
        matched += 1
        if "masks" in ours:
            theirs_mask = theirs["masks"][i, 0].numpy() > 0.5
            union = np.logical_or(theirs_mask, ours["masks"][j]).sum()
            inter = np.logical_and(theirs_mask, ours["masks"][j]).sum()
            # IoU ≥ 0.95; a mask of under 20 pixels may differ in one (a probability at 0.5, a box edge at a pixel).
            assert union - inter <= max((1 - MASK_IOU_MIN) * union, 1), f"detection {i}: mask IoU {inter / union:.3f}"
    extra = [j for j in range(len(scores)) if j not in taken and float(scores[j]) > floor + SCORE_TOL]
    assert not extra, f"ours found more above {floor:.3f}: scores {[float(scores[j]) for j in extra]}"
    return matched


def minimum_matches(exported_model: Exported) -> int:
    return 1 if exported_model.state is None else 5  # lively weights must give plenty; a real photo at least one


# --- the shared pre/post-processing --------------------------------------------------------------------------------


@pytest.mark.parametrize("hw", [(512, 512), (400, 600), (300, 451), (2000, 300), (17, 901), (1333, 800)])
def test_detection_resize_size_is_torchvisions(hw: tuple[int, int]) -> None:
    transform = GeneralizedRCNNTransform(800, 1333, [0.0] * 3, [1.0] * 3).eval()
    images, _ = transform([torch.zeros(3, *hw)])
    assert detection_resize_size(*hw) == tuple(images.image_sizes[0])


def test_paste_masks_matches_torchvisions_paste() -> None:
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand(40, 1, 28, 28, generator=generator) ** 2
    corner = torch.rand(40, 2, generator=generator) * torch.tensor([330.0, 250.0]) - 10.0
    boxes = torch.cat([corner, corner + 1.0 + torch.rand(40, 2, generator=generator) * 150.0], dim=1)
    expected = paste_masks_in_image(masks, boxes, (240, 320))[:, 0] > 0.5
    got = paste_masks(masks.numpy(), boxes.numpy(), 240, 320)
    assert got.shape == (40, 240, 320) and got.dtype == bool
    assert got.any(axis=(1, 2)).sum() >= 30
    disagree = (got != expected.numpy()).sum(axis=(1, 2))
    assert disagree.max() <= 2, f"pixels that differ per mask: {disagree.tolist()}"


def test_detection_parity_ignores_order_but_not_a_lost_detection() -> None:
    """The exporter's parity number for detectors: near-tied detections may swap places, none may go missing."""
    boxes = np.array([[[0, 0, 10, 10], [20, 20, 40, 40], [50, 0, 60, 30], [0, 0, 0, 0]]], dtype=np.float32)
    expected = [boxes, np.array([[0.9, 0.5, 0.5, 0.0]], np.float32), np.array([[1, 3, 3, 0]]), np.array([3])]
    swapped = [a.copy() for a in expected]
    swapped[0][0, [1, 2]] = boxes[0, [2, 1]] + 0.001
    swapped[1][0, 1:3] = [0.50002, 0.49999]
    assert detection_parity(expected, swapped) < 1e-3
    lost = [a.copy() for a in expected]
    lost[3] = np.array([2])
    assert detection_parity(expected, lost) == 1.0
    at_threshold = [a.copy() for a in expected]
    at_threshold[1][0, 2] = 0.0505  # within float noise of the 0.05 threshold: may be on either side
    assert detection_parity(at_threshold, lost) < 1e-3


# --- weights ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_torchvision_state_dict_loads_strictly_both_ways(name: str) -> None:
    spec = models.get_spec(name)
    ours = models.build_model(name)
    theirs = torchvision_model(name, size=FULL)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    weights = torchvision.models.get_weight(spec.torchvision_weights)
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in theirs.parameters()) == weights.meta["num_params"]
    assert not any(k.endswith("num_batches_tracked") for k in ours.state_dict())
    assert list(spec.labels) == weights.meta["categories"] and len(spec.labels) == 91


def legacy_key(key: str) -> str:
    key = key.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
    match = re.fullmatch(r"roi_heads\.mask_head\.(\d)\.0\.(weight|bias)", key)
    return f"roi_heads.mask_head.mask_fcn{int(match[1]) + 1}.{match[2]}" if match else key


@pytest.mark.parametrize("name", NAMES)
def test_published_checkpoints_legacy_keys_load(name: str) -> None:
    """The COCO files predate torchvision's module version 2: ``rpn.head.conv.weight``, ``mask_head.mask_fcn1``."""
    state = models.build_model(name).state_dict()
    legacy = {legacy_key(k): v for k, v in state.items()}
    assert "rpn.head.conv.weight" in legacy
    assert ("roi_heads.mask_head.mask_fcn1.weight" in legacy) == (name == "maskrcnn_resnet50_fpn")
    assert list(adapt_state_dict(legacy)) == list(state)
    apply_state_dict(models.build_model(name), models.get_spec(name), legacy)  # strict, through the loader


# --- eager: our PyTorch model is torchvision's arithmetic ----------------------------------------------------------


@pytest.mark.slow  # diagnostic: the ONNX tests below already compare the exported file with torchvision
@pytest.mark.parametrize("name", NAMES)
def test_eager_model_matches_torchvision(name: str, lively: Callable[[str], dict[str, torch.Tensor]]) -> None:
    ours = models.build_model(name).eval()
    ours.load_state_dict(lively(name), strict=True)
    x = resized(upload("astronaut"), SMALL)  # both see these pixels: torchvision's own resize is then a no-op
    theirs = torchvision_model(name, size=SMALL)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    with torch.no_grad():
        expected = theirs([x[0]])[0]
        got = ours(normalised(x))
    n = int(got["num_detections"][0])
    assert n == len(expected["scores"]) >= 5
    torch.testing.assert_close(got["scores"][0, :n], expected["scores"], atol=1e-5, rtol=0)
    torch.testing.assert_close(got["boxes"][0, :n], expected["boxes"], atol=1e-3, rtol=0)
    assert torch.equal(got["labels"][0, :n], expected["labels"])
    if "masks" in got:
        pasted = paste_masks_in_image(got["masks"][0, :n], got["boxes"][0, :n], tuple(x.shape[-2:]))
        torch.testing.assert_close(pasted, expected["masks"], atol=1e-4, rtol=0)


# --- ONNX: the exported file against torchvision's eager model -------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_onnx_matches_torchvision_box_for_box(name: str, exported: Callable[[str], Exported]) -> None:
    model = exported(name)
    image = upload("astronaut")
    with torch.no_grad():
        theirs = model.torchvision(SMALL)([image])[0]
    assert assert_same_detections(theirs, model.detect(image, SMALL)) >= minimum_matches(model)


def test_onnx_file_contract(exported: Callable[[str], Exported]) -> None:
    model = exported("fasterrcnn_resnet50_fpn")
    session = model.session
    inputs = {i.name: i for i in session.get_inputs()}
    assert list(inputs) == ["images", "score_threshold", "iou_threshold"]
    assert all(isinstance(d, str) for d in (inputs["images"].shape[0], *inputs["images"].shape[2:])), "N, H, W dynamic"
    assert inputs["score_threshold"].shape == inputs["iou_threshold"].shape == []
    assert [(o.name, o.type) for o in session.get_outputs()] == [
        ("boxes", "tensor(float)"),
        ("scores", "tensor(float)"),
        ("labels", "tensor(int64)"),
        ("num_detections", "tensor(int64)"),
    ]
    spec = read_metadata(model.path)["cnnserve.spec"]
    assert spec["task"] == "detection" and spec["family"] == "rcnn" and len(spec["labels"]) == 91
    assert spec["weights"] == model.source


def test_onnx_thresholds_are_graph_inputs(exported: Callable[[str], Exported]) -> None:
    model = exported("fasterrcnn_resnet50_fpn")
    x = resized(upload("astronaut"), SMALL)
    boxes, scores, labels, count = model.run(x)
    n = int(count[0])
    high = float(np.median(scores[0, :n]))
    boxes_hi, scores_hi, labels_hi, count_hi = model.run(x, score_threshold=high)
    m = int(count_hi[0])
    assert 0 < m < n and (scores_hi[0, :m] > high).all()
    np.testing.assert_allclose(scores_hi[0, :m], scores[0, :m], atol=1e-6)  # the same best detections, in order
    assert (scores_hi[0, m:] == 0).all() and (labels_hi[0, m:] == 0).all() and (boxes_hi[0, m:] == 0).all()

    strict_iou = 0.1
    boxes_s, _, labels_s, count_s = model.run(x, iou_threshold=strict_iou)
    k = int(count_s[0])
    overlap = box_iou(torch.from_numpy(boxes_s[0, :k]), torch.from_numpy(boxes_s[0, :k]))
    same_label = torch.from_numpy(labels_s[0, :k, None] == labels_s[0, None, :k])
    assert (overlap[same_label & ~torch.eye(k, dtype=torch.bool)] <= strict_iou).all()
    overlap = box_iou(torch.from_numpy(boxes[0, :n]), torch.from_numpy(boxes[0, :n]))
    same_label = torch.from_numpy(labels[0, :n, None] == labels[0, None, :n])
    assert (overlap[same_label & ~torch.eye(n, dtype=torch.bool)] > strict_iou).any(), "0.5 keeps what 0.1 removes"


def test_onnx_batch_and_image_size_are_dynamic(exported: Callable[[str], Exported]) -> None:
    model = exported("fasterrcnn_resnet50_fpn")
    x = resized(upload("astronaut"), SMALL)
    pair = torch.cat([x, x.flip(-1)])  # two different images of one size
    batched = model.run(pair)
    for row in range(2):
        single = model.run(pair[row : row + 1])
        n = int(single[3][0])
        assert int(batched[3][row]) == n > 0
        np.testing.assert_allclose(batched[0][row, :n], single[0][0, :n], atol=1e-2)
        np.testing.assert_allclose(batched[1][row, :n], single[1][0, :n], atol=1e-4)
    odd = F.interpolate(x, size=(203, 277), mode="bilinear", align_corners=False)  # not a multiple of 32
    boxes, _, _, count = model.run(odd)
    n = int(count[0])
    assert boxes.shape == (1, 100, 4) and n > 0
    assert (boxes[0, :n, 0::2] <= 277).all() and (boxes[0, :n, 1::2] <= 203).all() and (boxes[0, :n] >= 0).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("image_name", IMAGES)
def test_onnx_matches_torchvision_at_full_size(name: str, image_name: str, exported: Callable[[str], Exported]) -> None:
    model = exported(name)
    image = upload(image_name)
    with torch.no_grad():
        theirs = model.torchvision(FULL)([image])[0]
    assert assert_same_detections(theirs, model.detect(image, FULL)) >= minimum_matches(model)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_export_with_random_weights(name: str, tmp_path: Path) -> None:
    """Plain random weights find nothing above 0.05 on the parity batch; the export must still pass its check."""
    path = tmp_path / f"{name}.onnx"
    result = export_model(name, weights="random", output=path, save=False)
    assert result.parity <= 1e-2 and result.source == "random"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs: dict[str, Any] = {o.name: o.shape for o in session.get_outputs()}
    expected = {"boxes": 3, "scores": 2, "labels": 2, "num_detections": 1}
    if name.startswith("mask"):
        expected["masks"] = 5
        assert outputs["masks"][2:] == [1, 28, 28]
    assert {k: len(v) for k, v in outputs.items()} == expected
