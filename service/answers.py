"""One image's graph outputs → the contract's answer, per task; shared by the HTTP routes and batch scoring.

Every geometric answer is mapped back to the *upload*: boxes are scaled from the model's input tensor to the
upload's pixels and clipped, masks are resized to the upload's size, denoised images come back at the upload's
size in its mode family (grey stays grey, colour stays colour).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from .codecs import colour_overlay, draw_detections, draw_legend, heat_map, png_base64
from .errors import BadInput
from .imaging import to_unit_float
from .postprocess import check_top_k, rank_classes
from .runtime import LoadedModel

__all__ = ["AnswerOptions", "answer_for", "denoised_image", "detections", "scale_boxes"]


@dataclass(frozen=True)
class AnswerOptions:
    top_k: int = 5
    overlay: bool = False  # semantic segmentation: also a colour overlay PNG
    heatmap: bool = False  # anomaly: also a per-pixel error heat map PNG
    max_detections: int = 100
    render: bool = False  # detection, segmentation: also the upload with boxes/masks (semantic: overlay + key) drawn


def scale_boxes(boxes: np.ndarray, tensor_hw: tuple[int, int], upload_wh: tuple[int, int]) -> np.ndarray:
    """x1, y1, x2, y2 in the input tensor's pixels → the upload's pixels, clipped to the image."""
    (th, tw), (w, h) = tensor_hw, upload_wh
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * np.array([w / tw, h / th, w / tw, h / th])
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
    return out


def detections(
    model: LoadedModel,
    outputs: dict[str, np.ndarray],
    tensor_hw: tuple[int, int],
    upload_wh: tuple[int, int],
    limit: int,
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The padded detection outputs → best-first list of ``{"box", "index", "label", "score"}`` and the kept rows."""
    count = int(np.asarray(outputs["num_detections"]).reshape(-1)[0])
    scores = np.asarray(outputs["scores"], dtype=np.float64)[:count]
    order = np.argsort(-scores, kind="stable")[:limit]
    boxes = scale_boxes(np.asarray(outputs["boxes"])[:count][order], tensor_hw, upload_wh)
    labels = np.asarray(outputs["labels"])[:count][order]
    names = model.labels
    found = [
        {
            "box": [round(float(v), 2) for v in box],
            "index": int(label),
            "label": names[int(label)] if names is not None and 0 <= int(label) < len(names) else str(int(label)),
            "score": float(scores[i]),
        }
        for box, label, i in zip(boxes, labels, order, strict=True)
    ]
    return found, order


def denoised_image(reconstruction: np.ndarray, upload: Image.Image) -> Image.Image:
    """The reconstruction [C, h, w] in [0, 1] at the upload's size, grey for grey uploads, RGB otherwise."""
    arr = np.clip(np.rint(np.asarray(reconstruction, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))
    img = img.resize(upload.size, Image.Resampling.BILINEAR)
    grey_upload = upload.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
    return img.convert("L" if grey_upload else "RGB")


def _semantic(model: LoadedModel, outputs: dict[str, np.ndarray], upload: Image.Image, options: AnswerOptions) -> dict:
    logits = np.asarray(outputs["logits"])  # (K, h, w)
    small = logits.argmax(axis=0).astype(np.uint8)
    mask = np.asarray(Image.fromarray(small).resize(upload.size, Image.Resampling.NEAREST))
    counts = np.bincount(mask.reshape(-1), minlength=logits.shape[0])
    names = model.labels or [str(i) for i in range(logits.shape[0])]
    answer: dict[str, Any] = {
        "model": model.name,
        "kind": "semantic",
        "width": upload.width,
        "height": upload.height,
        "mask": png_base64(mask),
        "classes": [
            {"index": i, "label": names[i], "pixels": int(counts[i])} for i in range(len(counts)) if counts[i] > 0
        ],
    }
    if options.overlay or options.render:
        overlay = colour_overlay(upload, mask, logits.shape[0])
        if options.overlay:
            answer["overlay"] = png_base64(overlay)
        if options.render:  # the overlay with a key to its colours
            key = [(c["index"], c["label"]) for c in answer["classes"] if c["index"] > 0]
            answer["rendered"] = png_base64(draw_legend(overlay, key, logits.shape[0]))
    return answer


def _anomaly(model: LoadedModel, outputs: dict[str, np.ndarray], tensor: np.ndarray, options: AnswerOptions) -> dict:
    threshold = model.extra.get("cnnserve.threshold")
    if threshold is None:
        raise BadInput(f"model {model.name!r} has no calibrated anomaly threshold in its metadata; re-export it")
    score = float(np.asarray(outputs["error"]).reshape(-1)[0])
    answer: dict[str, Any] = {
        "model": model.name,
        "score": score,
        "threshold": float(threshold),
        "is_anomaly": bool(score > float(threshold)),
    }
    if options.heatmap:
        per_pixel = ((np.asarray(outputs["reconstruction"]) - to_unit_float(tensor)) ** 2).mean(axis=0)
        answer["heatmap"] = png_base64(heat_map(per_pixel))
    return answer


def answer_for(
    model: LoadedModel,
    outputs: dict[str, np.ndarray],
    *,
    upload: Image.Image,
    tensor: np.ndarray,
    route: str = "",
    options: AnswerOptions | None = None,
) -> dict[str, Any]:
    """``outputs`` holds one image's slice of every graph output; ``tensor`` is that image's model input."""
    options = options or AnswerOptions()
    tensor_hw = (int(tensor.shape[1]), int(tensor.shape[2]))
    if model.task == "classification":
        k = check_top_k(options.top_k, model.num_classes, model.name)
        return {"model": model.name, "predictions": rank_classes(outputs["probabilities"], k, model.labels)}
    if model.task == "detection":
        found, _ = detections(model, outputs, tensor_hw, upload.size, options.max_detections)
        answer = {"model": model.name, "width": upload.width, "height": upload.height, "detections": found}
        if options.render:
            answer["rendered"] = png_base64(draw_detections(upload, found, model.num_classes))
        return answer
    if model.task == "semantic_segmentation":
        return _semantic(model, outputs, upload, options)
    if model.task == "instance_segmentation":
        from .masks import paste_masks

        found, order = detections(model, outputs, tensor_hw, upload.size, options.max_detections)
        count = int(np.asarray(outputs["num_detections"]).reshape(-1)[0])
        boxes = np.array([d["box"] for d in found], dtype=np.float64).reshape(-1, 4)
        masks = paste_masks(np.asarray(outputs["masks"])[:count][order], boxes, upload.height, upload.width)
        rendered = draw_detections(upload, found, model.num_classes, list(masks)) if options.render else None
        for det, mask in zip(found, masks, strict=True):
            det["mask"] = png_base64(mask.astype(np.uint8) * 255)
        answer = {
            "model": model.name,
            "kind": "instance",
            "width": upload.width,
            "height": upload.height,
            "instances": found,
        }
        if rendered is not None:
            answer["rendered"] = png_base64(rendered)
        return answer
    if model.task == "autoencoder" and route == "/anomaly":
        return _anomaly(model, outputs, tensor, options)
    raise BadInput(f"model {model.name!r} ({model.task}) has no JSON answer on this route")
