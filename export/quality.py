"""How much a precision variant loses: calibration images, and quality measured through onnxruntime.

Both sides of the comparison are ONNX files run by onnxruntime on CPU (the fp32 export and the variant), on data
pre-processed by the service's own code (:mod:`service.imaging`), and scored with the demos' own metric code:

* the shipped demos on their held-out sets — LeNet-5 digits accuracy, U-Net mean IoU, YOLO mAP@0.5, CAE anomaly
  AUROC (8/9 vs test 0–7);
* any other model (e.g. an ImageNet classifier) by agreement with its fp32 file on a fixed set of photos from
  ``skimage.data``: top-5 overlap, top-1 agreement and cosine similarity of the probabilities and of the (centred)
  logits for classifiers; cosine similarity of the first output for the other tasks.

:func:`calibration_images` gives int8 calibration the same kind of data: the demos' *training* sets, random crops
of the same photos, or a user's folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cnnserve.service.contract import ModelContract
from cnnserve.service.imaging import Preprocess, decode_image, preprocess
from cnnserve.service.tasks import tasks_serving
from PIL import Image

__all__ = [
    "Quality",
    "calibration_images",
    "photo_images",
    "measure_quality",
    "run_onnx",
    "IMAGE_SUFFIXES",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Photos shipped inside scikit-image (no download): colour and grey, natural and not.
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "colorwheel",
    "retina",
    "stereo_motorcycle",
    "camera",
    "coins",
    "moon",
    "page",
    "text",
    "clock",
    "grass",
    "gravel",
    "brick",
    "cell",
)
CALIBRATION_LIMIT = 64


@dataclass(frozen=True)
class Quality:
    """One metric measured on the fp32 file and on the variant; ``drop`` = fp32 − variant (higher is better)."""

    metric: str
    fp32: float
    variant: float
    data: str
    details: dict[str, float]

    @property
    def drop(self) -> float:
        return self.fp32 - self.variant

    def to_json_dict(self) -> dict[str, object]:
        return {
            "metric": self.metric,
            "fp32": round(self.fp32, 6),
            "variant": round(self.variant, 6),
            "drop": round(self.drop, 6),
            "data": self.data,
            **{k: round(v, 6) for k, v in self.details.items()},
        }


def _pil_photos() -> list[tuple[str, Image.Image]]:
    import skimage.data

    photos = []
    for name in PHOTOS:
        array = getattr(skimage.data, name)()
        array = array[0] if isinstance(array, tuple) else array  # stereo pairs: the left view
        photos.append((name, Image.fromarray(np.asarray(array, dtype=np.uint8))))
    return photos


def photo_images(pre: Preprocess) -> np.ndarray | list[np.ndarray]:
    """The fixed evaluation set: every photo through the service's pre-processing (a stacked batch unless the
    model's pre-processing keeps each photo's aspect ratio, then a list)."""
    images = [preprocess(photo, pre) for _, photo in _pil_photos()]
    return _stack_if_same(images)


def _stack_if_same(images: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    return np.stack(images) if len({im.shape for im in images}) == 1 else images


def _photo_crops(pre: Preprocess, count: int, seed: int = 0) -> list[np.ndarray]:
    """Random crops (¼ to all of the photo, any position, random flips) of the photos: calibration that is not
    the evaluation set."""
    rng = np.random.default_rng(seed)
    photos = [photo for _, photo in _pil_photos()]
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        w, h = photo.size
        scale = rng.uniform(0.5, 1.0)
        cw, ch = max(8, int(w * scale)), max(8, int(h * scale))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = photo.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out.append(preprocess(crop, pre))
    return out


def _folder_images(folder: Path, pre: Preprocess, limit: int) -> list[np.ndarray]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    rng = np.random.default_rng(0)
    if len(files) > limit:
        files = [files[i] for i in sorted(rng.choice(len(files), size=limit, replace=False))]
    return [preprocess(decode_image(p.read_bytes()), pre) for p in files]


def _digits(images: np.ndarray, pre: Preprocess) -> np.ndarray:
    from cnnserve.export.demos.digits import digit_image

    return np.stack([preprocess(digit_image(img), pre) for img in images])


def _shapes(count: int, seed: int, pre: Preprocess):
    from cnnserve.export.demos.shapes import make_dataset

    samples = make_dataset(count, seed=seed, size=pre.input_size)
    return samples, np.stack([preprocess(Image.fromarray(s.image), pre) for s in samples])


def _demo_dataset(contract: ModelContract) -> str | None:
    weights = contract.weights
    return weights.removeprefix("demo:") if weights.startswith("demo:") else None


def calibration_images(
    contract: ModelContract, *, folder: Path | None = None, limit: int = CALIBRATION_LIMIT
) -> list[np.ndarray]:
    """Images [C, H, W] in [0, 1] for int8 calibration: ``folder`` when given, else the demo's training data
    (digits, shapes scenes), else random crops of the ``skimage.data`` photos."""
    pre = contract.preprocess
    if folder is not None:
        return _folder_images(folder, pre, limit)
    dataset = _demo_dataset(contract)
    if dataset is not None and dataset.startswith("sklearn-digits"):
        from cnnserve.export.demos.digits import digits_split

        return list(_digits(digits_split().train_images[:limit], pre))
    if dataset == "synthetic-shapes":
        from cnnserve.export.demos.shapes import TRAIN_SEED

        return list(_shapes(limit, TRAIN_SEED, pre)[1])
    return _photo_crops(pre, limit)


def run_onnx(session, images, *, batch: int = 32, **extra: float) -> list[list[np.ndarray]]:
    """Every output of ``session`` for ``images`` (a batch, or a list of differently sized images), in batches;
    a uint8 ``images`` input gets the same pixels as uint8. Returns one list per output, one array per batch."""
    meta = session.get_inputs()
    wants_uint8 = meta[0].type == "tensor(uint8)"
    chunks = [images[i : i + batch] for i in range(0, len(images), batch)]
    if isinstance(images, list):
        chunks = [im[None] for im in images]
    outputs: list[list[np.ndarray]] = [[] for _ in session.get_outputs()]
    for chunk in chunks:
        chunk = np.asarray(chunk, dtype=np.float32)
        feed = {meta[0].name: np.rint(chunk * 255.0).astype(np.uint8) if wants_uint8 else chunk}
        for m in meta[1:]:
            feed[m.name] = np.asarray(extra[m.name], dtype=np.float32)
        for out, value in zip(outputs, session.run(None, feed), strict=True):
            out.append(value)
    return outputs


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


# --- the demos' metrics, through onnxruntime --------------------------------------------------------------------


def _digits_accuracy(contract: ModelContract) -> tuple[str, str, Callable[[Path], float]]:
    from cnnserve.export.demos.digits import digits_split

    split = digits_split()
    images = _digits(split.test_images, contract.preprocess)

    def accuracy(path: Path) -> float:
        probs = run_onnx(_session(path), images)[0]  # probabilities (then the embedding)
        return float((np.concatenate(probs).argmax(1) == split.test_labels).mean())

    return "accuracy", f"digits test split ({len(images)})", accuracy


def _unet_miou(contract: ModelContract) -> tuple[str, str, Callable[[Path], float]]:
    from cnnserve.export.demos.shapes import CLASSES, HELD_OUT_SEED
    from cnnserve.export.demos.unet_shapes import HELD_OUT_SCENES, confusion_matrix, mean_iou

    samples, images = _shapes(HELD_OUT_SCENES, HELD_OUT_SEED, contract.preprocess)
    masks = np.stack([s.mask.astype(np.int64) for s in samples])

    def miou(path: Path) -> float:
        (logits,) = run_onnx(_session(path), images, batch=16)
        predicted = np.concatenate([chunk.argmax(1) for chunk in logits])
        return mean_iou(confusion_matrix(predicted, masks, len(CLASSES)))[0]

    return "mean_iou", f"held-out shapes scenes ({len(images)})", miou


def _yolo_map(contract: ModelContract) -> tuple[str, str, Callable[[Path], float]]:
    from cnnserve.export.demos.shapes import HELD_OUT_SEED
    from cnnserve.export.demos.yolo_shapes import (
        EVAL_IMAGES,
        EVAL_IOU_THRESHOLD,
        EVAL_SCORE_THRESHOLD,
        _scaled_truth,
        mean_average_precision,
    )

    pre = contract.preprocess
    samples, images = _shapes(EVAL_IMAGES, HELD_OUT_SEED, pre)
    truth = _scaled_truth(samples, pre.input_size)
    thresholds = {"score_threshold": EVAL_SCORE_THRESHOLD, "iou_threshold": EVAL_IOU_THRESHOLD}

    def map50(path: Path) -> float:
        boxes, scores, labels, counts = (np.concatenate(o) for o in run_onnx(_session(path), images, **thresholds))
        predictions = [(boxes[j, :c], scores[j, :c], labels[j, :c]) for j, c in enumerate(counts)]
        return mean_average_precision(predictions, truth, classes=range(contract.classes))["map"]

    return "map50", f"held-out shapes scenes ({len(images)})", map50


def _cae_auroc(contract: ModelContract) -> tuple[str, str, Callable[[Path], float]]:
    from cnnserve.export.demos.cae_digits import NORMAL_DIGITS
    from cnnserve.export.demos.digits import digits_split
    from sklearn.metrics import roc_auc_score

    split = digits_split()
    pre = contract.preprocess
    normal = _digits(split.test_images[np.isin(split.test_labels, NORMAL_DIGITS)], pre)
    anomalies = _digits(
        np.concatenate(
            [
                split.train_images[~np.isin(split.train_labels, NORMAL_DIGITS)],
                split.test_images[~np.isin(split.test_labels, NORMAL_DIGITS)],
            ]
        ),
        pre,
    )  # the same sets as cnnserve.demos.cae_digits.evaluate
    truth = np.concatenate([np.zeros(len(normal)), np.ones(len(anomalies))])

    def auroc(path: Path) -> float:
        session = _session(path)
        errors = [np.concatenate(run_onnx(session, images)[1]) for images in (normal, anomalies)]
        return float(roc_auc_score(truth, np.concatenate(errors)))

    return "auroc", f"digits 8/9 vs test 0-7 ({len(anomalies)} + {len(normal)})", auroc


def _inpaint_psnr(contract: ModelContract) -> tuple[str, str, Callable[[Path], float]]:
    from cnnserve.export.demos.inpaint_digits import HOLE_SHARE, evaluate_filling

    def psnr(path: Path) -> float:
        session = _session(path)
        names = [i.name for i in session.get_inputs()]
        return evaluate_filling(lambda x, m: session.run(None, dict(zip(names, (x, m), strict=True)))[0])[
            "hole_psnr_db"
        ]

    return "hole_psnr_db", f"digits test split (450), holes over {HOLE_SHARE:.0%} of each digit", psnr


def _generation_judge(contract: ModelContract) -> tuple[str, str, Callable[[Path], float]]:
    from cnnserve.export.demos.vae_digits import CONFIDENT, JUDGE_SAMPLES, draw_samples, judge_samples

    def confident(path: Path) -> float:
        session = _session(path)
        samples = draw_samples(lambda noise: session.run(None, {"noise": noise})[0], int(contract.noise_dim))
        return judge_samples(samples)["confident_share"]

    return f"judge_confident_share_p{CONFIDENT:g}", f"{JUDGE_SAMPLES} samples judged by the LeNet-5 demo", confident


# (demo data set, task) → (metric name, data description, metric of an ONNX file), higher is better.
DEMO_METRICS: dict[tuple[str, str], Callable[[ModelContract], tuple[str, str, Callable[[Path], float]]]] = {
    ("sklearn-digits", "classification"): _digits_accuracy,
    ("synthetic-shapes", "semantic_segmentation"): _unet_miou,
    ("synthetic-shapes", "detection"): _yolo_map,
    ("sklearn-digits-0to7", "autoencoder"): _cae_auroc,
    ("sklearn-digits", "inpainting"): _inpaint_psnr,
    ("sklearn-digits", "generation"): _generation_judge,
}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def _agreement(contract: ModelContract, fp32: Path, variant: Path) -> Quality:
    """Any model without a demo metric: the variant's outputs against the fp32 file's on the photos — the first
    task serving the model that has an agreement measure of its own (classification: top-5 overlap and friends),
    else the cosine similarity of the first output."""
    images = photo_images(contract.preprocess)
    names = [o.name for o in _session(fp32).get_outputs()]
    ref, got = (run_onnx(_session(path), images, batch=8, **contract.extra_inputs) for path in (fp32, variant))
    data = f"skimage.data photos ({len(images)})"
    outputs = [
        {name: np.concatenate(chunks) if len({c.shape[1:] for c in chunks}) == 1 else chunks[0] for name, chunks in
         zip(names, run, strict=True)}
        for run in (ref, got)
    ]  # fmt: skip
    for task in tasks_serving(contract.task):
        measured = task.agreement(*outputs)
        if measured is not None:
            metric, value, details = measured
            return Quality(metric, 1.0, value, data, details)
    flat = [np.concatenate([chunk.ravel() for chunk in out[0]]) for out in (ref, got)]
    return Quality("output_cosine", 1.0, _cosine(*flat), data, {})


def measure_quality(contract: ModelContract, fp32: Path, variant: Path) -> Quality:
    """The variant against its fp32 file: the demo's own metric for demo weights, else agreement on photos."""
    key = (_demo_dataset(contract) or "", contract.task)
    if key in DEMO_METRICS:
        metric, data, evaluate = DEMO_METRICS[key](contract)
        return Quality(metric, evaluate(fp32), evaluate(variant), data, {})
    return _agreement(contract, fp32, variant)
