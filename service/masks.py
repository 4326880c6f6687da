"""Mask R-CNN's torch-free paste-back: per-detection mask probabilities → full-image binary masks.

The resize before the graph (shorter side 800, longer capped at 1333) is ``service.imaging.detection_resize_size``,
the one definition the service, the batch scorer and the tests share. Mask R-CNN answers one 28×28 probability
map per detection; :func:`paste_masks` stretches each over its box in the upload, reproducing torchvision's
``paste_masks_in_image`` (one pixel of zero padding, box enlarged to match, integer box, bilinear resize with
``align_corners=False``), then thresholds it. numpy only: the serving image has no torch.
"""

from __future__ import annotations

import numpy as np

__all__ = ["paste_mask", "paste_masks"]


def _bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) matrix of PyTorch's bilinear ``align_corners=False`` resampling along one axis."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.maximum((np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), 0)
    lo = np.minimum(src.astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = src - lo
    weights = np.zeros((out_size, in_size), dtype=np.float32)
    rows = np.arange(out_size)
    np.add.at(weights, (rows, lo), 1 - frac)
    np.add.at(weights, (rows, hi), frac)
    return weights


def paste_mask(mask: np.ndarray, box: np.ndarray, height: int, width: int, threshold: float = 0.5) -> np.ndarray:
    """One (h, w) (or (1, h, w)) probability map and its box (x1, y1, x2, y2, image pixels) → (height, width) bool."""
    mask = np.asarray(mask, dtype=np.float32).reshape(np.shape(mask)[-2:])
    size = mask.shape[-1]
    padded = np.pad(mask, 1)  # one pixel of zeros, so the mask can fade out at its box's edge
    scale = np.float32((size + 2) / size)  # …and the box grows by the same factor
    x1, y1, x2, y2 = np.asarray(box, dtype=np.float32)
    half_w, half_h = (x2 - x1) * np.float32(0.5) * scale, (y2 - y1) * np.float32(0.5) * scale
    cx, cy = (x2 + x1) * np.float32(0.5), (y2 + y1) * np.float32(0.5)
    x1, x2, y1, y2 = (int(v) for v in (cx - half_w, cx + half_w, cy - half_h, cy + half_h))  # truncation, as .to(int64)
    box_w, box_h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
    resized = _bilinear_weights(padded.shape[0], box_h) @ padded @ _bilinear_weights(padded.shape[1], box_w).T
    out = np.zeros((height, width), dtype=bool)
    x_0, x_1 = max(x1, 0), min(x2 + 1, width)
    y_0, y_1 = max(y1, 0), min(y2 + 1, height)
    if x_0 < x_1 and y_0 < y_1:
        out[y_0:y_1, x_0:x_1] = resized[y_0 - y1 : y_1 - y1, x_0 - x1 : x_1 - x1] > threshold
    return out


def paste_masks(masks: np.ndarray, boxes: np.ndarray, height: int, width: int, threshold: float = 0.5) -> np.ndarray:
    """masks (D, 1, h, w) probabilities + boxes (D, 4) in the image's pixels → (D, height, width) bool.

    Memory is D·height·width bytes; for large uploads paste one detection at a time with :func:`paste_mask`.
    """
    masks = np.asarray(masks, dtype=np.float32)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    out = np.zeros((len(boxes), height, width), dtype=bool)
    for i, (mask, box) in enumerate(zip(masks, boxes, strict=True)):
        out[i] = paste_mask(mask, box, height, width, threshold)
    return out
