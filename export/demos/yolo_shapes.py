"""The YOLO v1 demo: ``yolov1_shapes`` learns the boxes of the synthetic shapes scenes (``cnnserve.demos.shapes``).

Scenes are generated at the model's input size (128×128) and go through the service's own pre-processing
(``service.imaging.preprocess``: resize straight to ``input_size``, here a no-op, and scale to [0, 1]), so the
demo's score is what a client gets over HTTP for an upload of that size. For any other upload size the service
resizes to 128×128 and maps boxes back by the two scale factors (width / 128, height / 128).

Training is the paper's loss (``models.yolo.yolo_loss``) with batch norm and AdamW (one-cycle schedule), on a fixed
generated set with random flips and transposes. The score is VOC-style mAP@0.5 (all-point interpolated AP, averaged
over the three classes), measured on freshly generated held-out scenes through the *exported* post-processing —
``export.yolo.YoloExport`` (decode → threshold → class-wise NMS) run in PyTorch — so it is the number the ONNX file
reproduces.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .records import write_record
from .shapes import HELD_OUT_SEED, TRAIN_SEED, ShapesSample, make_dataset

__all__ = [
    "MODEL",
    "EVAL_IMAGES",
    "EVAL_SCORE_THRESHOLD",
    "average_precision",
    "mean_average_precision",
    "shapes_batch",
    "evaluate",
    "evaluate_held_out",
    "recall_precision",
    "train_yolo_shapes",
]

MODEL = "yolov1_shapes"
TRAIN_IMAGES = 4000
EPOCHS = 8
BATCH_SIZE = 32
LEARNING_RATE = 2e-3
EVAL_IMAGES = 300
EVAL_SCORE_THRESHOLD = 0.01  # low: mAP integrates over every operating point
EVAL_IOU_THRESHOLD = 0.45  # NMS, the export default
OPERATING_SCORE_THRESHOLD = 0.25  # the export's default score_threshold: what a user of /detect gets


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC (2010+) all-point interpolated AP: area under the precision envelope (max precision to the right)."""
    r = np.concatenate(([0.0], recall, [1.0]))
    p = np.concatenate(([0.0], precision, [0.0]))
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.nonzero(r[1:] != r[:-1])[0]
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def mean_average_precision(
    predictions: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    ground_truth: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    iou: float = 0.5,
    classes: Sequence[int] | None = None,
) -> dict:
    """VOC-style mAP@``iou`` over images.

    ``predictions[i]`` = (boxes (D, 4), scores (D,), labels (D,)) for image i, ``ground_truth[i]`` = (boxes (K, 4),
    labels (K,)); boxes x1, y1, x2, y2 in the same pixels. Per class, detections of all images are ranked by score;
    each is a true positive if it overlaps a not-yet-matched truth of its class in its image by IoU ≥ ``iou``
    (the best-overlapping truth is the candidate), else a false positive. Classes default to those in the truth.
    Returns ``{"map": float, "ap": {class: float}}``.
    """
    import torch
    from torchvision.ops import box_iou

    if len(predictions) != len(ground_truth):
        raise ValueError(f"{len(predictions)} predictions for {len(ground_truth)} images")
    if classes is None:
        classes = sorted({int(c) for _, labels in ground_truth for c in np.asarray(labels).tolist()})
    ap: dict[int, float] = {}
    for cls in classes:
        truths = [torch.as_tensor(np.asarray(b, np.float32)[np.asarray(lab) == cls]) for b, lab in ground_truth]
        n_truth = sum(len(t) for t in truths)
        detections = [  # (score, image, box)
            (float(s), i, torch.as_tensor(np.asarray(b, np.float32)))
            for i, (boxes, scores, labels) in enumerate(predictions)
            for b, s, lab in zip(boxes, scores, labels, strict=True)
            if int(lab) == cls
        ]
        detections.sort(key=lambda d: -d[0])  # stable: ties keep image order
        matched = [np.zeros(len(t), dtype=bool) for t in truths]
        hits = np.zeros(len(detections), dtype=bool)
        for rank, (_, image, box) in enumerate(detections):
            if len(truths[image]) == 0:
                continue
            overlaps = box_iou(box[None], truths[image])[0]
            best = int(overlaps.argmax())
            if float(overlaps[best]) >= iou and not matched[image][best]:
                matched[image][best] = True
                hits[rank] = True
        if n_truth == 0:
            continue
        tp = np.cumsum(hits)
        fp = np.cumsum(~hits)
        ap[cls] = average_precision(tp / n_truth, tp / np.maximum(tp + fp, 1))
    return {"map": float(np.mean(list(ap.values()))) if ap else 0.0, "ap": ap}


def recall_precision(
    predictions: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    ground_truth: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    score_threshold: float,
    iou: float = 0.5,
) -> dict:
    """Recall and precision at one operating point: detections scoring ≥ ``score_threshold``, matched best score
    first to a not-yet-matched truth of their class with IoU ≥ ``iou`` (what a user of ``/detect`` with that
    ``score_threshold`` sees). Returns ``{"recall", "precision", "truths", "detections"}``."""
    import torch
    from torchvision.ops import box_iou

    hits = n_det = n_truth = 0
    for (boxes, scores, labels), (truth_boxes, truth_labels) in zip(predictions, ground_truth, strict=True):
        keep = np.asarray(scores) >= score_threshold
        boxes, scores, labels = np.asarray(boxes)[keep], np.asarray(scores)[keep], np.asarray(labels)[keep]
        n_det += len(scores)
        n_truth += len(truth_labels)
        if len(scores) == 0 or len(truth_labels) == 0:
            continue
        overlaps = box_iou(torch.as_tensor(boxes, dtype=torch.float32), torch.as_tensor(truth_boxes)).numpy()
        overlaps[np.asarray(labels)[:, None] != np.asarray(truth_labels)[None, :]] = 0.0  # a class must match
        matched = np.zeros(len(truth_labels), dtype=bool)
        for d in np.argsort(-scores, kind="stable"):
            candidates = np.where(matched, 0.0, overlaps[d])
            best = int(candidates.argmax())
            if candidates[best] >= iou:
                matched[best] = True
                hits += 1
    return {
        "recall": hits / max(n_truth, 1),
        "precision": hits / max(n_det, 1),
        "truths": n_truth,
        "detections": n_det,
    }


def _spec():
    import cnnserve.models.yolo  # noqa: F401  (registers the YOLO names, whether or not the registry has loaded them yet)
    from cnnserve.models import get_spec

    return get_spec(MODEL)


def shapes_batch(samples: Sequence[ShapesSample]) -> np.ndarray:
    """Scenes → the model's input batch (N, 3, H, W) float32 in [0, 1], through the service's pre-processing."""
    from cnnserve.export.onnx import contract_for
    from cnnserve.service.imaging import preprocess

    pre = contract_for(_spec()).preprocess
    return np.stack([preprocess(Image.fromarray(s.image), pre) for s in samples])


def _scaled_truth(samples: Sequence[ShapesSample], input_size: tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Truth boxes in model-input pixels (scenes may be generated at another size) and labels 0..C−1."""
    out = []
    for s in samples:
        sy, sx = input_size[0] / s.image.shape[0], input_size[1] / s.image.shape[1]
        out.append((s.boxes * np.array([sx, sy, sx, sy], np.float32), s.labels - 1))
    return out


def evaluate(model, samples: Sequence[ShapesSample], *, batch_size: int = 64) -> dict:
    """mAP@0.5 of a ``yolov1_shapes`` network on ``samples``, through the export wrapper's decode + NMS."""
    import torch
    from cnnserve.export.yolo import YoloExport

    spec = _spec()
    wrapped = YoloExport(model, spec).eval()
    thresholds = torch.tensor(EVAL_SCORE_THRESHOLD), torch.tensor(EVAL_IOU_THRESHOLD)
    predictions = []
    with torch.no_grad():
        for i in range(0, len(samples), batch_size):
            images = torch.from_numpy(shapes_batch(samples[i : i + batch_size]))
            boxes, scores, labels, counts = (t.numpy() for t in wrapped(images, *thresholds))
            predictions += [(boxes[j, :c], scores[j, :c], labels[j, :c]) for j, c in enumerate(counts)]
    result = mean_average_precision(
        predictions, _scaled_truth(samples, spec.input_size), classes=range(spec.num_classes)
    )
    result["ap"] = {spec.labels[c]: round(v, 4) for c, v in result["ap"].items()}
    return result


def evaluate_held_out(model, n: int = EVAL_IMAGES) -> dict:
    """The held-out generator's scenes (``shapes_heldout``, each at its own size, resized as the service resizes
    an upload): mAP@0.5 with AP per class, and recall / precision at IoU 0.5 at the service's default score
    threshold — issue 19's goals are recall ≥ 0.8 with mAP ≥ 0.7 here."""
    import torch
    from cnnserve.export.yolo import YoloExport

    from .shapes_heldout import make_held_out

    spec = _spec()
    samples = make_held_out(n, seed=HELD_OUT_SEED)
    wrapped = YoloExport(model, spec).eval()
    thresholds = torch.tensor(EVAL_SCORE_THRESHOLD), torch.tensor(EVAL_IOU_THRESHOLD)
    predictions = []
    with torch.no_grad():
        for i in range(0, len(samples), 64):
            images = torch.from_numpy(shapes_batch(samples[i : i + 64]))
            boxes, scores, labels, counts = (t.numpy() for t in wrapped(images, *thresholds))
            predictions += [(boxes[j, :c], scores[j, :c], labels[j, :c]) for j, c in enumerate(counts)]
    truth = _scaled_truth(samples, spec.input_size)
    result = mean_average_precision(predictions, truth, classes=range(spec.num_classes))
    at = recall_precision(predictions, truth, score_threshold=OPERATING_SCORE_THRESHOLD)
    return {
        "map50": round(result["map"], 4),
        "ap50": {spec.labels[c]: round(v, 4) for c, v in result["ap"].items()},
        "recall50": round(at["recall"], 4),
        "precision50": round(at["precision"], 4),
        "objects": at["truths"],
    }


def _augment(images, boxes: list, generator):
    """A random symmetry of the square for the whole batch: flips and a transpose (8 ways). Circles, axis-aligned
    squares and triangles stay what they are, and each object visits more grid cells of the position-specific
    fully connected head."""
    import torch

    size = images.shape[-1]
    flip_x, flip_y, transpose = torch.rand(3, generator=generator) < 0.5
    if transpose:
        images = images.transpose(-1, -2)
        boxes = [b[:, [1, 0, 3, 2]] for b in boxes]
    if flip_x:
        images = images.flip(-1)
        boxes = [torch.stack((size - b[:, 2], b[:, 1], size - b[:, 0], b[:, 3]), 1) for b in boxes]
    if flip_y:
        images = images.flip(-2)
        boxes = [torch.stack((b[:, 0], size - b[:, 3], b[:, 2], size - b[:, 1]), 1) for b in boxes]
    return images, boxes


def train_yolo_shapes(
    output_dir: Path,
    *,
    seed: int = 0,
    epochs: int = EPOCHS,
    train_images: int = TRAIN_IMAGES,
    eval_images: int = EVAL_IMAGES,
    log=print,
) -> dict:
    """Train ``yolov1_shapes`` reproducibly on 2 CPU cores (a few minutes); write safetensors + a JSON record."""
    import torch
    from cnnserve.models import build_model
    from cnnserve.models.yolo import encode_targets, yolo_loss
    from safetensors.torch import save_file

    start = time.perf_counter()
    torch.manual_seed(seed)
    spec = _spec()
    height, width = spec.input_size
    samples = make_dataset(train_images, size=(height, width), seed=TRAIN_SEED + seed)
    # Stored as the uint8 the float pixels came from: x / 255 below gives back preprocess()'s bytes exactly.
    pixels = torch.from_numpy(np.rint(shapes_batch(samples) * 255.0).astype(np.uint8))
    truth = [(torch.from_numpy(b), torch.from_numpy(lab)) for b, lab in _scaled_truth(samples, (height, width))]

    model = build_model(MODEL)
    S, B, C = model.grid, model.boxes, model.num_classes
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    steps_per_epoch = -(-train_images // BATCH_SIZE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=LEARNING_RATE, total_steps=epochs * steps_per_epoch, pct_start=0.15
    )
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(train_images, generator=generator)
        total = 0.0
        for i in range(0, train_images, BATCH_SIZE):
            idx = order[i : i + BATCH_SIZE].tolist()
            images, boxes = _augment(pixels[idx].float() / 255.0, [truth[j][0] for j in idx], generator)
            target = torch.stack(
                [
                    encode_targets(b, truth[j][1], S=S, C=C, image_size=(height, width))
                    for b, j in zip(boxes, idx, strict=True)
                ]
            )
            loss = yolo_loss(model((images - mean) / std), target, S=S, B=B, C=C)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(idx)
        log(f"epoch {epoch + 1}/{epochs}: loss {total / train_images:.4f} ({time.perf_counter() - start:.0f} s)")
    train_seconds = time.perf_counter() - start

    model.eval()
    held_out = make_dataset(eval_images, size=(height, width), seed=HELD_OUT_SEED)
    result = evaluate(model, held_out)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(output_dir / f"{MODEL}.safetensors"))
    record = {
        "model": MODEL,
        "dataset": "synthetic-shapes",
        "train": f"make_dataset({train_images}, size=({height}, {width}), seed={TRAIN_SEED + seed}), "
        "random flips and transposes",
        "held_out": f"make_dataset({eval_images}, size=({height}, {width}), seed={HELD_OUT_SEED})",
        "train_images": train_images,
        "eval_images": eval_images,
        "epochs": epochs,
        "seed": seed,
        "map50": round(result["map"], 4),
        "ap50": result["ap"],
        "eval_score_threshold": EVAL_SCORE_THRESHOLD,
        "eval_iou_threshold": EVAL_IOU_THRESHOLD,
        "seconds": round(train_seconds, 1),
        "torch": torch.__version__,
    }
    write_record(output_dir / f"{MODEL}.json", record)
    log(f"mAP@0.5 {result['map']:.3f} on {eval_images} held-out scenes {result['ap']}; trained {train_seconds:.0f} s")
    return record
