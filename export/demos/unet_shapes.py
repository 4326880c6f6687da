"""The U-Net demo: per-pixel background/circle/square/triangle on the synthetic shapes scenes.

Training scenes are ``make_dataset(n, seed=TRAIN_SEED)``, the README's held-out scenes
``make_dataset(n, seed=HELD_OUT_SEED)``; both go through the service's own pre-processing
(``service.imaging.preprocess`` with the spec's contract: bilinear resize to 128×128, [0, 1]), so the measured
mean IoU is what a client of ``/segment`` gets. The only augmentation is the dihedral group (90° rotations and
flips), which maps every class onto itself: squares stay axis-aligned, circles and triangles stay what they are.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image

from .records import write_record
from .shapes import CLASSES, HELD_OUT_SEED, TRAIN_SEED, make_dataset

__all__ = [
    "TRAIN_SCENES",
    "HELD_OUT_SCENES",
    "shapes_batch",
    "confusion_matrix",
    "mean_iou",
    "predict",
    "evaluate",
    "evaluate_held_out",
    "dice_loss",
    "train_unet_shapes",
]

TRAIN_SCENES = 2000
HELD_OUT_SCENES = 200
STEPS = 400
BATCH = 16


def _spec():
    import cnnserve.models.unet  # noqa: F401  (registers "unet" whether or not the registry lists the family yet)
    from cnnserve.models import get_spec

    return get_spec("unet")


def shapes_batch(n: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` scenes as the service would feed them: images float32 (N, 3, 128, 128) in [0, 1], masks int64."""
    from cnnserve.export.onnx import contract_for
    from cnnserve.service.imaging import preprocess

    pre = contract_for(_spec()).preprocess
    samples = make_dataset(n, seed=seed, size=pre.input_size)
    images = np.stack([preprocess(Image.fromarray(s.image), pre) for s in samples])
    masks = np.stack([s.mask.astype(np.int64) for s in samples])
    return images, masks


def confusion_matrix(predicted: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixel counts: rows are true classes, columns predicted classes."""
    index = target.reshape(-1).astype(np.int64) * num_classes + predicted.reshape(-1).astype(np.int64)
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def mean_iou(confusion: np.ndarray) -> tuple[float, list[float]]:
    """IoU per class over all pixels of the set (TP / (TP + FP + FN)), and their mean over the classes."""
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    iou = tp / np.maximum(union, 1)
    return float(iou.mean()), [float(v) for v in iou]


def predict(model, images: np.ndarray, *, batch: int = 32) -> np.ndarray:
    """Class index per pixel (N, H, W) for [0, 1] images; normalises with the spec's mean/std like the graph."""
    import torch

    spec = _spec()
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(images[i : i + batch])
            out.append(model((x - mean) / std).argmax(1).numpy())
    return np.concatenate(out)


def evaluate(model, *, n: int = HELD_OUT_SCENES, seed: int = HELD_OUT_SEED) -> dict:
    images, masks = shapes_batch(n, seed=seed)
    m, per_class = mean_iou(confusion_matrix(predict(model, images), masks, len(CLASSES)))
    return {"mean_iou": m, "iou": dict(zip(CLASSES, per_class, strict=True))}


def evaluate_held_out(model, n: int = 300) -> dict:
    """Mean IoU and IoU per class on the held-out generator's scenes (``shapes_heldout``, each at its own size),
    resized as the service resizes an upload; the truth at 128×128 is the class covering most of each pixel.
    Issue 19's goal: mean IoU ≥ 0.8 here."""
    from cnnserve.export.onnx import contract_for
    from cnnserve.service.imaging import preprocess

    from .shapes_heldout import make_held_out, resize_sample

    pre = contract_for(_spec()).preprocess
    samples = make_held_out(n, seed=HELD_OUT_SEED)
    images = np.stack([preprocess(Image.fromarray(s.image), pre) for s in samples])
    masks = np.stack([resize_sample(s, pre.input_size).mask.astype(np.int64) for s in samples])
    m, per_class = mean_iou(confusion_matrix(predict(model, images), masks, len(CLASSES)))
    return {"mean_iou": m, "iou": dict(zip(CLASSES, per_class, strict=True))}


def _augment(x, y, generator):
    """One random element of the dihedral group (rot90 × flip) for the whole batch: every class maps onto itself."""
    import torch

    k, flip = torch.randint(0, 4, (2,), generator=generator).tolist()
    x, y = torch.rot90(x, k, (2, 3)), torch.rot90(y, k, (1, 2))
    if flip % 2:
        x, y = x.flip(3), y.flip(2)
    return x, y


def dice_loss(logits, target, eps: float = 1.0):
    """1 − mean over classes of the soft Dice coefficient over the batch: a differentiable stand-in for mean IoU
    that weighs every class alike, however few pixels it has (shapes cover ~11 % of a scene)."""
    import torch
    import torch.nn.functional as F

    probs = torch.softmax(logits, dim=1)  # (N, K, H, W)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)  # (N, K, H, W)
    intersection = (probs * onehot).sum(dim=(0, 2, 3))
    total = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    return 1.0 - ((2 * intersection + eps) / (total + eps)).mean()


def train_unet_shapes(
    output_dir: Path,
    *,
    seed: int = 0,
    log=print,
    steps: int = STEPS,
    batch_size: int = BATCH,
    scenes: int = TRAIN_SCENES,
    lr: float = 3e-3,
) -> dict:
    """Train the ``unet`` demo reproducibly on 2 CPU cores; write ``unet.safetensors`` + ``unet.json``.

    ``steps`` AdamW steps (one-cycle learning rate) of ``batch_size`` whole scenes; the loss is cross-entropy
    plus soft Dice. Cross-entropy alone spends its gradient on the background (~89 % of the pixels) and, in the
    same budget, leaves the shapes' classes confused (mean IoU ~0.78 instead of ~0.98).
    """
    import torch
    import torch.nn.functional as F
    from cnnserve.models import build_model
    from safetensors.torch import save_file

    start = time.perf_counter()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    spec = _spec()
    images, masks = shapes_batch(scenes, seed=TRAIN_SEED)
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(masks)
    log(f"{scenes} training scenes generated in {time.perf_counter() - start:.1f} s")

    # channels_last: ~25 % faster convolutions on CPU; the weights (and the exported graph) do not depend on it.
    model = build_model("unet").to(memory_format=torch.channels_last)
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.15)
    model.train()
    order = torch.randperm(scenes, generator=generator)
    cursor, total = 0, 0.0
    for step in range(steps):
        if cursor + batch_size > scenes:
            order, cursor = torch.randperm(scenes, generator=generator), 0
        idx = order[cursor : cursor + batch_size]
        cursor += batch_size
        x, y = _augment(x_all[idx], y_all[idx], generator)
        x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
        logits = model(x)
        loss = F.cross_entropy(logits, y) + dice_loss(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item()
        if (step + 1) % 50 == 0:
            log(f"step {step + 1}/{steps}: loss {total / 50:.4f} ({time.perf_counter() - start:.0f} s)")
            total = 0.0
    seconds = time.perf_counter() - start

    metrics = evaluate(model)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(output_dir / "unet.safetensors"))
    record = {
        "model": "unet",
        "dataset": "synthetic-shapes",
        "train_scenes": f"make_dataset({scenes}, seed={TRAIN_SEED})",
        "held_out_scenes": f"make_dataset({HELD_OUT_SCENES}, seed={HELD_OUT_SEED})",
        "classes": list(CLASSES),
        "base_width": model.inc.block[0].out_channels,
        "steps": steps,
        "batch_size": batch_size,
        "loss": "cross-entropy + soft Dice (mean over the 4 classes)",
        "optimizer": f"AdamW, one-cycle lr max {lr}, weight decay 1e-4",
        "augmentation": "random 90-degree rotation and flip per batch",
        "seed": seed,
        "mean_iou": round(metrics["mean_iou"], 4),
        "iou": {k: round(v, 4) for k, v in metrics["iou"].items()},
        "metric": "IoU per class over all held-out pixels (TP / (TP + FP + FN)), mean over the 4 classes",
        "train_seconds": round(seconds, 1),
        "torch": torch.__version__,
    }
    write_record(output_dir / "unet.json", record)
    log(f"mean IoU {metrics['mean_iou']:.4f} on {HELD_OUT_SCENES} held-out scenes; trained in {seconds:.0f} s")
    return record
