"""Faster R-CNN and Mask R-CNN export: normalisation and thresholds in the graph, NMS as ONNX NonMaxSuppression.

The wrappers take the ONNX contract's float32 pixels in [0, 1] (already resized by the caller to torchvision's
shorter side 800 / longer ≤ 1333, see ``service/masks.py``), normalise with the spec's mean/std, and answer the
padded detection tensors of ``models/rcnn.py`` — plus ``masks [N, D, 1, 28, 28]`` (probabilities) for Mask R-CNN,
which the service pastes into the upload with ``service.masks.paste_masks``. ``score_threshold`` and
``iou_threshold`` are scalar graph inputs with torchvision's defaults (0.05, 0.5).

``models.rcnn.rowwise_nms`` is a custom op (eager: torchvision's NMS per row) so that the exported graph keeps
static shapes and a *tensor* IoU threshold; :data:`ONNX_TRANSLATIONS` maps it to ONNX's own batched
``NonMaxSuppression`` (the row is its batch dimension) followed by a scatter into the keep mask. torchvision's
``roi_align`` exports through torch's built-in translation (``RoiAlign``, ``output_half_pixel``).
"""

from __future__ import annotations

from collections.abc import Sequence

import cnnserve.models.rcnn  # noqa: F401  (defines the custom op torch.ops.cnnserve.rowwise_nms)
import numpy as np
import torch
import torch.nn as nn
from cnnserve.models import ModelSpec
from onnxscript import ir
from onnxscript import opset18 as op

from .wrappers import Normalize, TaskExport, register_task

__all__ = ["FasterRCNNExport", "MaskRCNNExport", "ONNX_TRANSLATIONS", "rowwise_nms_onnx", "detection_parity"]

DETECTION_OUTPUTS = ("boxes", "scores", "labels", "num_detections")
THRESHOLDS = {"score_threshold": 0.05, "iou_threshold": 0.5}
PARITY_TOLERANCE = 1e-2  # of detection_parity: 1 − IoU, |Δscore| and |Δmask probability| of paired detections
CUTOFF_MARGIN = 1e-3  # a detection scoring this close to a cut-off may fall on either side of it


def rowwise_nms_onnx(boxes, scores, iou_threshold):  # noqa: ANN001, ANN201 (onnxscript values)
    """``cnnserve::rowwise_nms`` in ONNX: boxes (B, S, 4), scores (B, S), iou_threshold () → keep (B, S) bool."""
    selected = op.NonMaxSuppression(
        boxes,
        op.Unsqueeze(scores, [1]),  # (B, 1, S): one "class" per row
        op.Constant(value=ir.tensor([2**63 - 1], dtype=ir.DataType.INT64)),  # no cap on kept boxes
        op.Reshape(iou_threshold, [1]),
        op.Constant(value=ir.tensor([float("-inf")], dtype=ir.DataType.FLOAT)),  # −inf scores take no part
    )  # (K, 3): row, class (always 0), box
    row_and_box = op.Gather(selected, op.Constant(value=ir.tensor([0, 2], dtype=ir.DataType.INT64)), axis=1)
    zeros = op.ConstantOfShape(op.Shape(scores), value=ir.tensor([0.0], dtype=ir.DataType.FLOAT))
    ones = op.Expand(op.Constant(value=ir.tensor([1.0], dtype=ir.DataType.FLOAT)), op.Shape(selected, start=0, end=1))
    return op.Cast(op.ScatterND(zeros, row_and_box, ones), to=ir.DataType.BOOL)


ONNX_TRANSLATIONS = {torch.ops.cnnserve.rowwise_nms.default: rowwise_nms_onnx}


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lt, rb = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    return inter / np.maximum(area + np.prod(boxes[:, 2:] - boxes[:, :2], axis=1) - inter, 1e-12)


def detection_parity(expected: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> float:
    """How far the ONNX detections are from PyTorch's, in a way float noise cannot inflate.

    A position-by-position difference is meaningless for detections: two boxes whose scores differ by less than
    the noise swap places, and one scoring at a cut-off appears on one side only. So per image each PyTorch
    detection is paired with the ONNX detection of its label that overlaps it most; the answer is the worst
    max(1 − IoU, |Δscore|, max |Δmask probability|) over the pairs, or 1.0 for a detection of either side without
    a twin (IoU < 0.5) — unless it scores within ``CUTOFF_MARGIN`` of a cut-off (the default score threshold, or
    the last score when all slots are full). Outputs in graph order: boxes, scores, labels, num_detections[, masks].
    """
    worst = 0.0
    for image in range(len(expected[3])):
        sides = []
        for outputs in (expected, got):
            n = int(outputs[3][image])
            sides.append([np.asarray(o[image, :n], dtype=np.float64) for o in (outputs[0], outputs[1], outputs[2])])
            sides[-1].append(outputs[4][image, :n] if len(outputs) > 4 else None)
        (e_boxes, e_scores, e_labels, e_masks), (g_boxes, g_scores, g_labels, g_masks) = sides
        free = np.ones(len(g_scores), dtype=bool)
        for i in range(len(e_scores)):
            iou = np.where(free & (g_labels == e_labels[i]), _iou(e_boxes[i], g_boxes), 0.0)
            j = int(np.argmax(iou)) if len(iou) else -1
            if j < 0 or iou[j] < 0.5:
                worst = max(worst, 0.0 if _near_cutoff(e_scores[i], e_scores, expected[1].shape[1]) else 1.0)
                continue
            free[j] = False
            worst = max(worst, 1.0 - iou[j], abs(e_scores[i] - g_scores[j]))
            if e_masks is not None:
                worst = max(worst, float(np.abs(e_masks[i] - g_masks[j]).max()))
        for j in np.flatnonzero(free):
            worst = max(worst, 0.0 if _near_cutoff(g_scores[j], g_scores, got[1].shape[1]) else 1.0)
    return worst


def _near_cutoff(score: float, scores: np.ndarray, slots: int) -> bool:
    cutoffs = [THRESHOLDS["score_threshold"]] + ([float(scores[-1])] if len(scores) == slots else [])
    return any(abs(score - cutoff) <= CUTOFF_MARGIN for cutoff in cutoffs)


class FasterRCNNExport(nn.Module):
    """(images [N, 3, H, W] in [0, 1], score_threshold (), iou_threshold ()) → boxes, scores, labels, num_detections."""

    def __init__(self, model: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.normalize = Normalize(spec.mean, spec.std)
        self.model = model

    def detect(
        self, images: torch.Tensor, score_threshold: torch.Tensor, iou_threshold: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return self.model(self.normalize(images), score_threshold=score_threshold, iou_threshold=iou_threshold)

    def forward(
        self, images: torch.Tensor, score_threshold: torch.Tensor, iou_threshold: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        found = self.detect(images, score_threshold, iou_threshold)
        return tuple(found[name] for name in DETECTION_OUTPUTS)


class MaskRCNNExport(FasterRCNNExport):
    """As :class:`FasterRCNNExport`, plus masks [N, D, 1, 28, 28]: each detection's mask probabilities."""

    def forward(
        self, images: torch.Tensor, score_threshold: torch.Tensor, iou_threshold: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        found = self.detect(images, score_threshold, iou_threshold)
        return tuple(found[name] for name in (*DETECTION_OUTPUTS, "masks"))


# Both models are family "rcnn" but answer different outputs, so each registers under its model name; the
# custom NMS op travels with them to `torch.onnx.export(custom_translation_table=...)`.
register_task(
    "fasterrcnn_resnet50_fpn",
    TaskExport(
        FasterRCNNExport,
        DETECTION_OUTPUTS,
        dynamic_hw=True,
        extra_inputs=THRESHOLDS,
        parity_tolerance=PARITY_TOLERANCE,
        parity_metric=detection_parity,
        onnx_translations=ONNX_TRANSLATIONS,
    ),
)
register_task(
    "maskrcnn_resnet50_fpn",
    TaskExport(
        MaskRCNNExport,
        (*DETECTION_OUTPUTS, "masks"),
        dynamic_hw=True,
        extra_inputs=THRESHOLDS,
        parity_tolerance=PARITY_TOLERANCE,
        parity_metric=detection_parity,
        onnx_translations=ONNX_TRANSLATIONS,
    ),
)
