"""YOLO v1 in the graph: normalise → network → decode → score threshold → class-wise NMS → padded detections.

The exported file answers the detection contract by itself: ``images`` [N, 3, H, W] in [0, 1] plus two optional
0-d float32 inputs, ``score_threshold`` (default 0.25, or the model's own) and ``iou_threshold`` (default 0.45), give
``boxes`` [N, D, 4] (x1, y1, x2, y2 in the input tensor's pixels), ``scores`` [N, D], ``labels`` [N, D] int64 and
``num_detections`` [N] int64; rows past ``num_detections`` are zeros. D (``max_detections``) is fixed at export. A
model built with ``views`` > 1 (``yolov1_shapes_conv``) averages that many symmetries of the image before decoding
(``models.yolo.symmetry_average``), all in one batch of the network.

Why it is shaped like this (the export is the hard part):

* **One NMS for the whole batch.** Every predictor of every image goes through a single class-wise NMS with
  group ``image · C + label``, so images never suppress each other and there is no Python loop over N (which
  ``torch.export`` would unroll at the example batch size). Kept indices are then scattered into a fixed
  [N, S·S·B] mask, and ``topk`` + ``gather`` move each image's detections into the padded [N, D] layout.
* **The IoU threshold is a tensor.** ``torchvision::nms`` takes its threshold as a Python float, which
  ``torch.export`` cannot feed from a graph input. :func:`batched_nms` is therefore a small custom op
  (``cnnserve::batched_nms``): in PyTorch it *is* ``torchvision.ops.batched_nms`` (the threshold read with
  ``float()``); in ONNX it is torchvision's own coordinate-offset trick followed by the standard
  ``NonMaxSuppression`` operator, whose ``iou_threshold`` is an input. The ONNX translation is registered with
  onnxscript's torchlib registry, which ``torch.onnx.export(dynamo=True)`` reads on every export.
* **Thresholding after NMS.** A box under the score threshold can only suppress boxes scoring even lower, so NMS
  over all candidates followed by the threshold keeps exactly what threshold-then-NMS keeps, with fixed shapes.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from cnnserve.models import ModelSpec
from cnnserve.models.yolo import decode, symmetry_average
from onnxscript import opset18 as op
from onnxscript.function_libs.torch_lib.registration import torch_op

from .wrappers import Normalize, TaskExport, register_task

__all__ = [
    "MAX_DETECTIONS",
    "SHAPES_CONV_SCORE_THRESHOLD",
    "YOLO_EXPORT",
    "YoloExport",
    "batched_nms",
    "select_detections",
]

MAX_DETECTIONS = 100


@torch.library.custom_op("cnnserve::batched_nms", mutates_args=())
def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: torch.Tensor
) -> torch.Tensor:
    """``torchvision.ops.batched_nms`` with the IoU threshold as a 0-d tensor (so it can be a graph input).

    boxes (M, 4) x1, y1, x2, y2; scores (M,); idxs (M,) int64 groups that never suppress each other →
    kept indices (K,) int64, best score first.
    """
    return torchvision.ops.batched_nms(boxes, scores, idxs, float(iou_threshold))


@batched_nms.register_fake
def _(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: torch.Tensor) -> torch.Tensor:
    kept = torch.library.get_ctx().new_dynamic_size()  # data-dependent length, known only at run time
    return boxes.new_empty((kept,), dtype=torch.int64)


@torch_op("cnnserve::batched_nms", trace_only=True)
def _batched_nms_onnx(boxes, scores, idxs, iou_threshold):
    """ONNX: torchvision's coordinate trick (shift each group past the others) + ``NonMaxSuppression``."""
    offsets = op.Mul(op.Cast(idxs, to=1), op.Add(op.ReduceMax(boxes, keepdims=0), op.Constant(value_float=1.0)))
    shifted = op.Add(boxes, op.Unsqueeze(offsets, [1]))  # (M, 4)
    selected = op.NonMaxSuppression(
        op.Unsqueeze(shifted, [0]),  # (1, M, 4): one batch
        op.Unsqueeze(scores, [0, 1]),  # (1, 1, M): one class
        op.Constant(value_ints=[2**62]),  # no cap on the number kept
        op.Reshape(iou_threshold, [1]),
    )  # (K, 3): batch, class, box index (the order does not matter: the caller turns the kept set into a mask)
    return op.Reshape(op.Slice(selected, [2], [3], [1]), [-1])


def select_detections(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    score_threshold: torch.Tensor,
    iou_threshold: torch.Tensor,
    *,
    num_classes: int,
    max_detections: int = MAX_DETECTIONS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Candidates (N, K, 4) / (N, K) / (N, K) → class-wise NMS + score threshold → padded (N, D, …) + counts.

    Export-friendly: one NMS over all N·K candidates, then fixed-shape mask, ``topk`` and ``gather``.
    """
    n, k = scores.shape
    image = torch.arange(n, device=scores.device).view(n, 1).expand(n, k)
    groups = (image * num_classes + labels).reshape(-1)  # images and classes never suppress each other
    iou_threshold = iou_threshold.clamp(0.0, 1.0)  # ONNX NonMaxSuppression fails outside [0, 1]
    keep = batched_nms(boxes.reshape(-1, 4), scores.reshape(-1), groups, iou_threshold)  # (M,) data-dependent
    kept = torch.zeros(n * k, dtype=torch.bool, device=scores.device).index_fill(0, keep, True).view(n, k)
    detected = kept & (scores > score_threshold)  # (N, K)

    ranked, order = torch.where(detected, scores, -1.0).topk(min(max_detections, k), dim=1)  # best first
    is_detection = detected.gather(1, order)  # (N, D′): True for the first num_detections rows of each image
    out_boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4)) * is_detection[..., None]
    out_scores = scores.gather(1, order) * is_detection
    out_labels = labels.gather(1, order) * is_detection
    if max_detections > k:  # fewer candidates than D: pad to the promised width
        pad = max_detections - k
        out_boxes, out_scores, out_labels = (
            F.pad(out_boxes, (0, 0, 0, pad)),
            F.pad(out_scores, (0, pad)),
            F.pad(out_labels, (0, pad)),
        )
    return out_boxes, out_scores, out_labels, is_detection.sum(dim=1)


class YoloExport(nn.Module):
    """images [N, 3, H, W] in [0, 1], score_threshold [], iou_threshold [] → boxes, scores, labels, num_detections."""

    def __init__(self, model: nn.Module, spec: ModelSpec, *, max_detections: int = MAX_DETECTIONS) -> None:
        super().__init__()
        self.normalize = Normalize(spec.mean, spec.std)
        self.model = model
        self.grid, self.boxes, self.num_classes = model.grid, model.boxes, model.num_classes
        self.views = getattr(model, "views", 1)  # symmetries averaged in the graph (models.yolo.symmetry_average)
        self.max_detections = max_detections

    def forward(
        self, images: torch.Tensor, score_threshold: torch.Tensor, iou_threshold: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        pred = symmetry_average(self.model, self.normalize(images), self.views)  # (N, S, S, B·5 + C)
        height, width = images.shape[-2:]
        boxes, scores, labels = decode(
            pred, S=self.grid, B=self.boxes, C=self.num_classes, image_size=(height, width)
        )  # (N, S·S·B, 4), (N, S·S·B), (N, S·S·B)
        return select_detections(
            boxes,
            scores,
            labels,
            score_threshold,
            iou_threshold,
            num_classes=self.num_classes,
            max_detections=self.max_detections,
        )


YOLO_EXPORT = TaskExport(
    YoloExport,
    ("boxes", "scores", "labels", "num_detections"),
    extra_inputs={"score_threshold": 0.25, "iou_threshold": 0.45},
)
register_task("yolo", YOLO_EXPORT)
# yolov1_shapes_conv averages eight views of the image in its graph (models.yolo.CONFIGS, symmetry_average): a shape
# only some views find scores lower than it would in one, so its default score threshold is lower; chosen on the
# held-out generator's validation scenes, never on the test set (README, "The shapes demos on scenes drawn another
# way").
SHAPES_CONV_SCORE_THRESHOLD = 0.15
register_task(
    "yolov1_shapes_conv",
    replace(YOLO_EXPORT, extra_inputs={**YOLO_EXPORT.extra_inputs, "score_threshold": SHAPES_CONV_SCORE_THRESHOLD}),
)
