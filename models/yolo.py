"""YOLO v1 (Redmon et al. 2016, "You Only Look Once: Unified, Real-Time Object Detection").

The paper's idea in one line: detection as one regression. The image is cut into an S×S grid; each cell predicts
B boxes (x, y, √w, √h, confidence) and one set of C class probabilities, so the whole answer is one tensor
S×S×(B·5 + C) — 7×7×30 for PASCAL VOC — read off a convolutional "darknet" by two fully connected layers.

* :class:`ConvBlock` is one darknet layer: convolution → batch norm → leaky ReLU (slope 0.1). The paper has no
  batch norm (it arrived with YOLO v2); we add it because it makes these nets train from scratch in minutes on a
  CPU, which the shapes demo needs. It is the only departure from the paper's layers.
* The darknets are data: :data:`DARKNET_24` is the paper's Figure 3 (24 convolutions, the 1×1 "reduction"
  layers between the 3×3 ones, four 2×2 max-pools and one strided convolution), :data:`FAST_YOLO_9` is Fast
  YOLO's nine-layer net, and :data:`CONFIGS` adds grid size, boxes per cell, input size and head width per
  registered name. One class, :class:`YOLOv1`, turns a row into a model.
* :class:`YoloHead` is the two fully connected layers; its output is reshaped to ``(N, S, S, B·5 + C)``. The
  last layer is linear, as in the paper: nothing squashes the outputs, :func:`decode` clamps what must lie in
  [0, 1].

Per cell the B·5 + C numbers are ``[x, y, √w, √h, confidence] × B`` then ``C`` class probabilities: (x, y) is
the box centre as an offset within its cell, (w, h) the box size as a fraction of the image.
:func:`encode_targets` writes ground truth in the same layout (one box per cell, then an "object here" flag and
a one-hot class), :func:`yolo_loss` is the paper's sum-squared loss (λcoord = 5, λnoobj = 0.5), and
:func:`decode` turns the tensor into boxes in input pixels with class-specific confidences
P(class | object) · confidence — fixed-size tensor arithmetic, with no loop over the data, so it exports to ONNX.
Non-maximum suppression is the export wrapper's job (``export/yolo.py``).

``yolov1`` is the paper's model (448×448, VOC classes, random weights: there is no published PyTorch
checkpoint). Pixels go in as [0, 1] with no mean/std, as darknet fed them. ``yolov1_tiny`` is Fast YOLO at any
input size that is a multiple of 64, with YOLO's head. ``yolov1_shapes`` is the demo: a nine-layer darknet in Fast
YOLO's spirit at 128×128 with an 8×8 grid and three classes, trained on the synthetic shapes
(``cnnserve train yolo-shapes``). ``yolov1_shapes_conv`` is that darknet under a convolutional head
(:class:`YoloConvHead`, YOLO v2's idea; the output, loss and decode stay v1's) at 256×256 with a 16×16 grid, trained
from ``yolov1_shapes``' darknet (``cnnserve train yolo-shapes-conv``): the detector ``/detect`` serves by default. Its
``views`` is 8: the export averages its answers for the eight symmetries of the image (:func:`symmetry_average`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import ModelSpec, register_model

__all__ = [
    "VOC_CLASSES",
    "SHAPES_CLASSES",
    "DARKNET_24",
    "FAST_YOLO_9",
    "YoloConfig",
    "CONFIGS",
    "ConvBlock",
    "YoloHead",
    "YoloConvHead",
    "YOLOv1",
    "encode_targets",
    "decode",
    "symmetry_average",
    "symmetric_view",
    "VIEW_COUNTS",
    "yolo_loss",
    "yolov1",
    "yolov1_tiny",
    "yolov1_shapes",
    "yolov1_shapes_conv",
]

VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
# Class index = position here; the shapes generator's labels are these + 1 (0 is its background).
SHAPES_CLASSES = ("circle", "square", "triangle")

# A darknet layer is (kernel, out_channels, stride); "M" is a 2×2/2 max-pool. Padding is always kernel // 2.
Layer = tuple[int, int, int] | str

# The paper's Figure 3: 24 convolutional layers. 448 → 7 (four max-pools and the stride-2 conv: ÷64).
DARKNET_24: tuple[Layer, ...] = (
    (7, 64, 2), "M",  # 448 → 224 → 112
    (3, 192, 1), "M",  # → 56
    (1, 128, 1), (3, 256, 1), (1, 256, 1), (3, 512, 1), "M",  # → 28
    *((1, 256, 1), (3, 512, 1)) * 4, (1, 512, 1), (3, 1024, 1), "M",  # → 14
    *((1, 512, 1), (3, 1024, 1)) * 2, (3, 1024, 1), (3, 1024, 2),  # → 7
    (3, 1024, 1), (3, 1024, 1),
)  # fmt: skip

# Fast YOLO: "nine convolutional layers instead of 24 and fewer filters in those layers", everything else as YOLO
# (the paper says no more). The layers follow darknet's tiny nets: 3×3 convolutions 16 → 1024 with six max-pools
# (÷64, so 448 → 7), the last three 1024 wide.
FAST_YOLO_9: tuple[Layer, ...] = (
    (3, 16, 1), "M",
    (3, 32, 1), "M",
    (3, 64, 1), "M",
    (3, 128, 1), "M",
    (3, 256, 1), "M",
    (3, 512, 1), "M",
    (3, 1024, 1), (3, 1024, 1), (3, 1024, 1),
)  # fmt: skip

# The shapes demo: nine convolutions (3×3, and 1×1 reductions as in YOLO), small enough to train on two CPU cores:
# a strided first layer (like YOLO's 7×7/2) and three max-pools take 128×128 to 8×8, so each cell of the 8×8 grid
# sees its own 16×16 pixels (shapes keep apart: no two box centres share a cell in 2,000 generated scenes); a last
# 1×1 layer shrinks the features for the FC head. Widths 32 → 256: at half of that (16 → 128) the net fitted the
# classic scenes but not textured ones (randomised in-domain mAP 0.27, held-out 0.36).
SHAPES_DARKNET: tuple[Layer, ...] = (
    (3, 32, 2), "M",  # 128 → 64 → 32
    (3, 64, 1), "M",  # → 16
    (3, 128, 1), "M",  # → 8
    (3, 256, 1), (1, 128, 1), (3, 256, 1), (1, 128, 1), (3, 256, 1), (1, 32, 1),
)  # fmt: skip
# The same darknet for a convolutional head: without the last 1×1, which only shrank the features for the FC head.
SHAPES_DARKNET_CONV: tuple[Layer, ...] = SHAPES_DARKNET[:-1]


@dataclass(frozen=True)
class YoloConfig:
    """One registered YOLO: its darknet, its grid, its head and the head's width."""

    darknet: tuple[Layer, ...]
    # Width of the first fully connected layer: 4096 in the paper, for 7·7·30 = 1470 outputs. Keep it at least
    # S·S·(B·5 + C): narrower, it cannot carry every cell's answer, and the demo's classes blur (mAP 0.19 vs 0.48
    # at 256 vs 1024, same training). For a convolutional head, the width of its 3×3 layer.
    hidden: int
    grid: int = 7  # S
    boxes: int = 2  # B
    image_size: int = 448
    dropout: float = 0.5  # after the first fully connected layer, as in the paper
    head: str = "fc"  # "fc": the paper's two fully connected layers; "conv": YoloConvHead
    views: int = 1  # symmetries of the square averaged at inference (symmetry_average); 1: the image alone


CONFIGS: dict[str, YoloConfig] = {
    "yolov1": YoloConfig(DARKNET_24, hidden=4096),
    "yolov1_tiny": YoloConfig(FAST_YOLO_9, hidden=4096),
    # The demo trains for minutes on fresh generated scenes with flips; dropout would only slow it down.
    "yolov1_shapes": YoloConfig(SHAPES_DARKNET, hidden=1024, grid=8, image_size=128, dropout=0.0),
    # The same darknet (stride 16) on a 256×256 input, so a 16×16 grid: at 128² a shape a tenth of an upload across
    # is 8–13 pixels, and those were most of what the demo missed (README, "The shapes demos on scenes drawn another
    # way"). The FC head could not follow the input size; a convolutional head does by itself. Eight views: trained
    # on all eight symmetries of its scenes, the mean of its eight answers is an ensemble for free (held-out validation
    # mAP 0.811 → 0.851, README).
    "yolov1_shapes_conv": YoloConfig(SHAPES_DARKNET_CONV, hidden=256, grid=16, image_size=256, head="conv", views=8),
}


class ConvBlock(nn.Module):
    """One darknet layer: convolution → batch norm (not in the paper, see the module docstring) → leaky ReLU 0.1."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class YoloHead(nn.Module):
    """The two fully connected layers: features → hidden → S·S·(B·5 + C), reshaped to (N, S, S, B·5 + C)."""

    def __init__(self, in_features: int, hidden: int, *, grid: int, boxes: int, num_classes: int, dropout: float):
        super().__init__()
        self.grid = grid
        self.per_cell = boxes * 5 + num_classes
        self.fc1 = nn.Linear(in_features, hidden)
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, grid * grid * self.per_cell)  # linear output, as in the paper

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.act(self.fc1(torch.flatten(features, 1))))  # (N, hidden)
        return self.fc2(x).view(-1, self.grid, self.grid, self.per_cell)  # (N, S, S, B·5 + C)


class YoloConvHead(nn.Module):
    """A 3×3 darknet layer and a 1×1 convolution to B·5 + C channels, permuted to (N, S, S, B·5 + C).

    Not the paper's head: YOLO v2 replaced the fully connected layers by convolutions (its anchors are left out
    here, so the output, the loss and :func:`decode` stay v1's). Every cell is read by the same weights from the
    features around it, so a shape seen in one cell during training is known in every cell, where v1's FC head
    learns each cell's answer separately. The price: one cell per feature, so the darknet's output side must be the
    grid. On the shapes demo this head, with 2.5 times fewer weights, found more held-out shapes (README).
    """

    def __init__(self, in_channels: int, hidden: int, *, boxes: int, num_classes: int) -> None:
        super().__init__()
        self.block = ConvBlock(in_channels, hidden, 3)
        self.out = nn.Conv2d(hidden, boxes * 5 + num_classes, 1)  # linear output, as v1's last layer

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(self.block(features)).permute(0, 2, 3, 1)  # (N, B·5 + C, S, S) → (N, S, S, B·5 + C)


class YOLOv1(nn.Module):
    """A darknet (a table of layers) and a head (:class:`YoloHead`, or :class:`YoloConvHead` with ``head="conv"``):
    images (N, C, H, W) → (N, S, S, B·5 + C)."""

    def __init__(
        self,
        darknet: tuple[Layer, ...],
        *,
        hidden: int,
        grid: int = 7,
        boxes: int = 2,
        num_classes: int = 20,
        image_size: int = 448,
        in_channels: int = 3,
        dropout: float = 0.5,
        head: str = "fc",
        views: int = 1,
    ) -> None:
        super().__init__()
        if views not in VIEW_COUNTS:
            raise ValueError(f"views must be one of {', '.join(map(str, VIEW_COUNTS))}, not {views}")
        self.grid, self.boxes, self.num_classes, self.image_size = grid, boxes, num_classes, image_size
        self.views = views  # read by the export (symmetry_average); training and forward() see one view
        self.features, channels, stride = self._make_darknet(darknet, in_channels)
        if image_size % stride:
            raise ValueError(f"image_size {image_size} must be a multiple of the darknet's stride {stride}")
        side = image_size // stride
        if head == "fc":
            self.head: nn.Module = YoloHead(
                channels * side * side, hidden, grid=grid, boxes=boxes, num_classes=num_classes, dropout=dropout
            )
        elif head == "conv":
            if side != grid:
                raise ValueError(
                    f"a convolutional head answers one cell per feature: image_size {image_size} / stride {stride} "
                    f"= {side} must equal the grid {grid}"
                )
            self.head = YoloConvHead(channels, hidden, boxes=boxes, num_classes=num_classes)
        else:
            raise ValueError(f"unknown head {head!r}; one of fc, conv")

    @staticmethod
    def _make_darknet(darknet: tuple[Layer, ...], in_channels: int) -> tuple[nn.Sequential, int, int]:
        """Layers from the table; returns them with the last width and the total stride."""
        layers: list[nn.Module] = []
        channels, stride = in_channels, 1
        for layer in darknet:
            if layer == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                stride *= 2
            else:
                kernel, width, conv_stride = layer
                layers.append(ConvBlock(channels, width, kernel, conv_stride))
                channels, stride = width, stride * conv_stride
        return nn.Sequential(*layers), channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (N, 1024, 7, 7) → (N, S, S, B·5 + C) for yolov1


# The symmetries of the square as (transpose, mirror left-right, mirror top-bottom), applied in that order; the first
# n of them are the n views averaged (1: the image; 2: and its mirror image; 4: and both upside down; 8: all).
SYMMETRIES = tuple((t, x, y) for t in (False, True) for y in (False, True) for x in (False, True))
VIEW_COUNTS = (1, 2, 4, 8)


def symmetric_view(images: torch.Tensor, transpose: bool, mirror_x: bool, mirror_y: bool) -> torch.Tensor:
    """Images (…, H, W) seen through one symmetry of the square, in :data:`SYMMETRIES`' order (the shapes trainers'
    augmentation draws the same three choices)."""
    if transpose:
        images = images.transpose(-1, -2)
    if mirror_x:
        images = images.flip(-1)
    if mirror_y:
        images = images.flip(-2)
    return images


def _unview(pred: torch.Tensor, boxes: int, transpose: bool, mirror_x: bool, mirror_y: bool) -> torch.Tensor:
    """A view's (N, S, S, B·5 + C) answer → the image's: undo the mirrors and the transpose, on the grid (which
    cell) and in the boxes (where in the cell, which side is the width)."""
    n, rows, cols, _ = pred.shape
    box = pred[..., : boxes * 5].reshape(n, rows, cols, boxes, 5)
    classes = pred[..., boxes * 5 :]
    x, y, root_w, root_h, confidence = box.unbind(-1)
    if mirror_y:
        x, y, root_w, root_h, confidence, classes = (t.flip(1) for t in (x, y, root_w, root_h, confidence, classes))
        y = 1 - y
    if mirror_x:
        x, y, root_w, root_h, confidence, classes = (t.flip(2) for t in (x, y, root_w, root_h, confidence, classes))
        x = 1 - x
    if transpose:
        x, y, root_w, root_h, confidence, classes = (
            t.transpose(1, 2) for t in (y, x, root_h, root_w, confidence, classes)
        )
    box = torch.stack((x, y, root_w, root_h, confidence), dim=-1)  # (N, S, S, B, 5)
    return torch.cat((box.reshape(*classes.shape[:3], boxes * 5), classes), dim=-1)


def symmetry_average(model: YOLOv1, images: torch.Tensor, views: int) -> torch.Tensor:
    """The model's (N, S, S, B·5 + C) answer averaged over the first ``views`` symmetries of the square
    (:data:`SYMMETRIES`): each view of the images is predicted (all in one batch of views·N), its answer mapped
    back onto the image's grid, and the answers averaged before any decoding.

    Why: a detector trained on all eight views of its scenes (the shapes demos' flips and transposes) gives eight
    equally good, not equally wrong, answers for one scene; their mean is an ensemble with no more weights (YOLO v5
    calls it ``--augment``). It costs ``views`` times the compute, and it lowers the scores of what only some views
    see, so the operating threshold is chosen with it. Transposes need square images (the service resizes to the
    model's square input).
    """
    if views == 1:
        return model(images)
    if views > 2 and images.shape[-1] != images.shape[-2]:
        raise ValueError(f"{views} views need square images, not {tuple(images.shape[-2:])}")
    chosen = SYMMETRIES[:views]
    pred = model(torch.cat([symmetric_view(images, *v) for v in chosen]))  # (views·N, S, S, B·5 + C)
    pred = pred.reshape(views, -1, *pred.shape[1:])
    return torch.stack([_unview(pred[i], model.boxes, *v) for i, v in enumerate(chosen)]).mean(0)


def encode_targets(
    boxes: torch.Tensor, labels: torch.Tensor, *, S: int, C: int, image_size: tuple[int, int]
) -> torch.Tensor:
    """Ground truth of one image → the (S, S, 5 + C) target: ``[x, y, √w, √h, object, one-hot class]`` per cell.

    ``boxes`` (K, 4) are x1, y1, x2, y2 in pixels of an image of ``image_size`` (H, W); ``labels`` (K,) are class
    indices 0..C−1. A box belongs to the cell that holds its centre; (x, y) is the centre's offset in that cell,
    (w, h) the size as a fraction of the image. A cell holds one object (YOLO v1's limit): a later box whose
    centre falls in an occupied cell is dropped.
    """
    height, width = image_size
    target = torch.zeros(S, S, 5 + C)
    for (x1, y1, x2, y2), label in zip(boxes.tolist(), labels.tolist(), strict=True):
        cx, cy = (x1 + x2) / 2 / width * S, (y1 + y2) / 2 / height * S  # centre in grid units
        col, row = min(int(cx), S - 1), min(int(cy), S - 1)
        if target[row, col, 4] == 1:
            continue
        w, h = (x2 - x1) / width, (y2 - y1) / height
        target[row, col, :5] = torch.tensor([cx - col, cy - row, math.sqrt(w), math.sqrt(h), 1.0])
        target[row, col, 5 + int(label)] = 1.0
    return target


def _cell_boxes(t: torch.Tensor, S: int) -> torch.Tensor:
    """(..., 4) ``[x, y, √w, √h]`` → (..., 4) x1, y1, x2, y2 as fractions of the image, relative to the cell.

    IoU does not care where the cell is, so the loss can compare a cell's predictions with its truth like this.
    """
    cx, cy = t[..., 0] / S, t[..., 1] / S
    w, h = t[..., 2] ** 2, t[..., 3] ** 2
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def _paired_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of a[i] with b[i] (broadcast), boxes x1, y1, x2, y2. ``torchvision.ops.box_iou`` is all-pairs (M×K);
    the loss needs only the diagonal."""
    wh = (torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area_a + area_b - inter).clamp(min=1e-9)


def yolo_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    S: int,
    B: int,
    C: int,
    lambda_coord: float = 5.0,
    lambda_noobj: float = 0.5,
    confidence_target: str = "iou",
) -> torch.Tensor:
    """The paper's sum-squared loss (its equation 3), summed over the grid and averaged over the batch.

    ``pred`` is the network's (N, S, S, B·5 + C), ``target`` is :func:`encode_targets` stacked to (N, S, S, 5 + C).
    In a cell that holds an object, the predictor whose box has the highest IoU with the truth is "responsible":
    it alone is pulled towards the box (x, y, √w, √h, weighted by λcoord) and its confidence towards that IoU.
    Every other predictor's confidence is pulled to 0 (weighted by λnoobj), and the class probabilities of a cell
    are trained only where it holds an object.

    ``confidence_target="one"`` pulls the responsible predictor's confidence to 1 instead, as YOLO v3's objectness
    does: with the paper's target a found object scores its box's IoU (often 0.5–0.7 on small shapes) times its
    class probability, so a fixed score threshold drops good boxes; with 1 the score says "an object is here"
    and the box's quality is left to the coordinates' loss.
    """
    if confidence_target not in ("iou", "one"):
        raise ValueError(f"unknown confidence_target {confidence_target!r}; one of iou, one")
    n = pred.shape[0]
    boxes = pred[..., : B * 5].reshape(n, S, S, B, 5)  # (N, S, S, B, 5)
    class_probs = pred[..., B * 5 :]  # (N, S, S, C)
    truth = target[..., None, :4]  # (N, S, S, 1, 4)
    has_object = target[..., 4]  # (N, S, S): 1obj_i

    iou = _paired_iou(_cell_boxes(boxes[..., :4], S), _cell_boxes(truth, S))  # (N, S, S, B)
    responsible = F.one_hot(iou.argmax(-1), B).to(pred.dtype) * has_object[..., None]  # 1obj_ij
    not_responsible = 1.0 - responsible  # 1noobj_ij

    xy = ((boxes[..., 0:2] - truth[..., 0:2]) ** 2).sum(-1)
    sqrt_wh = ((boxes[..., 2:4] - truth[..., 2:4]) ** 2).sum(-1)
    confidence = boxes[..., 4]
    loss = (
        lambda_coord * (responsible * (xy + sqrt_wh)).sum()
        + (responsible * (confidence - (iou.detach() if confidence_target == "iou" else 1.0)) ** 2).sum()
        + lambda_noobj * (not_responsible * confidence**2).sum()
        + (has_object[..., None] * (class_probs - target[..., 5:]) ** 2).sum()
    )
    return loss / n


def decode(
    pred: torch.Tensor, *, S: int, B: int, C: int, image_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, S, S, B·5 + C) → every predictor's box, class-specific confidence and class, before any threshold.

    Returns ``boxes`` (N, S·S·B, 4) x1, y1, x2, y2 in pixels of an input of ``image_size`` (H, W), clipped to it;
    ``scores`` (N, S·S·B) = P(class | object) · confidence for the predictor's most probable class (both factors
    clamped to [0, 1]: the last layer is linear); ``labels`` (N, S·S·B) int64, that class's index. Predictors are
    ordered row, column, box. Fixed-size tensor arithmetic only, so it traces and exports with a dynamic batch.
    """
    n = pred.shape[0]
    height, width = image_size
    boxes = pred[..., : B * 5].reshape(n, S, S, B, 5)  # (N, S, S, B, 5)
    rows = torch.arange(S, dtype=pred.dtype, device=pred.device).view(1, S, 1, 1)
    cols = torch.arange(S, dtype=pred.dtype, device=pred.device).view(1, 1, S, 1)
    cx = (boxes[..., 0] + cols) / S * width  # cell offset → pixels
    cy = (boxes[..., 1] + rows) / S * height
    w = boxes[..., 2] ** 2 * width  # the net predicts √w, √h
    h = boxes[..., 3] ** 2 * height
    xyxy = torch.stack(
        (
            (cx - w / 2).clamp(0, width),
            (cy - h / 2).clamp(0, height),
            (cx + w / 2).clamp(0, width),
            (cy + h / 2).clamp(0, height),
        ),
        dim=-1,
    )  # (N, S, S, B, 4)
    class_prob, labels = pred[..., B * 5 :].clamp(0, 1).max(dim=-1)  # (N, S, S): one class per cell
    scores = class_prob[..., None] * boxes[..., 4].clamp(0, 1)  # (N, S, S, B) class-specific confidence
    labels = labels[..., None].expand(-1, -1, -1, B)
    return xyxy.reshape(n, S * S * B, 4), scores.reshape(n, S * S * B), labels.reshape(n, S * S * B)


def _spec(name: str, *, labels: tuple[str, ...], description: str) -> ModelSpec:
    config = CONFIGS[name]
    return ModelSpec(
        name=name,
        task="detection",
        family="yolo",
        input_size=(config.image_size, config.image_size),
        mean=(0.0, 0.0, 0.0),  # darknet feeds pixels in [0, 1], no mean/std
        std=(1.0, 1.0, 1.0),
        num_classes=len(labels),
        labels=labels,
        description=description,
    )


def _yolov1(name: str, *, num_classes: int, image_size: int | None = None, **kwargs: Any) -> YOLOv1:
    config = CONFIGS[name]
    options: dict[str, Any] = {
        "hidden": config.hidden,
        "grid": config.grid,
        "boxes": config.boxes,
        "image_size": image_size or config.image_size,
        "dropout": config.dropout,
        "head": config.head,
        "views": config.views,
    }
    return YOLOv1(config.darknet, num_classes=num_classes, **{**options, **kwargs})


@register_model(
    _spec("yolov1", labels=VOC_CLASSES, description="YOLO v1: 24-conv darknet + 2 FC, 448×448 → 7×7×(2·5 + 20)")
)
def yolov1(*, num_classes: int = 20, **kwargs: Any) -> YOLOv1:
    """The paper's YOLO: ``image_size``, ``grid`` (S), ``boxes`` (B), ``in_channels``, ``dropout`` may be set."""
    return _yolov1("yolov1", num_classes=num_classes, **kwargs)


@register_model(
    _spec("yolov1_tiny", labels=VOC_CLASSES, description="Fast YOLO: 9-conv darknet + 2 FC, 448×448 → 7×7×30")
)
def yolov1_tiny(*, num_classes: int = 20, **kwargs: Any) -> YOLOv1:
    """Fast YOLO; ``image_size`` may be any multiple of 64 (the grid stays S×S, the head adapts)."""
    return _yolov1("yolov1_tiny", num_classes=num_classes, **kwargs)


@register_model(
    _spec(
        "yolov1_shapes",
        labels=SHAPES_CLASSES,
        description="YOLO v1 shapes demo: Fast-YOLO-style 9-conv darknet, 128×128 → 8×8×(2·5 + 3)",
    )
)
def yolov1_shapes(*, num_classes: int = 3, **kwargs: Any) -> YOLOv1:
    """The demo detector for the synthetic shapes; the default build is the shipped weights' architecture."""
    return _yolov1("yolov1_shapes", num_classes=num_classes, **kwargs)


@register_model(
    _spec(
        "yolov1_shapes_conv",
        labels=SHAPES_CLASSES,
        description="YOLO shapes demo, conv head: yolov1_shapes' darknet at 256×256, 3×3 + 1×1 conv → 16×16×13",
    )
)
def yolov1_shapes_conv(*, num_classes: int = 3, **kwargs: Any) -> YOLOv1:
    """The shapes detector with :class:`YoloConvHead` (v1's output, loss and decode); the served ``/detect``
    default. Trained from ``yolov1_shapes``' darknet (``cnnserve train yolo-shapes-conv``), its last three stages
    with ``yolo_loss(confidence_target="one")``."""
    return _yolov1("yolov1_shapes_conv", num_classes=num_classes, **kwargs)
