"""The inpainting demo: the CAE variant ``cae_inpaint`` trained to fill random holes in scikit-learn's digits.

Data: every digit (0–9) of the LeNet-5 demo's fixed training split (``digits_split``), through the service's own
pre-processing (8×8 grey → bilinear 32×32, [0, 1]), shifted by up to a pixel. Each training image gets a fresh random
hole — a rectangle anywhere, a rectangle inside the digit, or a few thick brush strokes (what a person paints on
the page) — and the network sees the image with the hole blanked plus the hole's mask; the loss is the squared error
inside the hole, plus a little outside it so the code keeps the whole digit.

Measured on the test split, which the model never saw, with one rectangle per digit covering 25 % of the digit's
bounding box (the box of its ink, pixels ≥ ``INK``), drawn with a fixed seed: the PSNR inside the hole of the
model's filling, against the hole filled with the mean of its border (the ring of pixels just outside it). The
training record and the exported file (``cnnserve.evaluation``) carry both and their difference.

Learning to fill holes is learning features (Pathak et al.'s point): the code of an image with no hole is this
model's embedding (``/embed``). Measured too: a k-nearest-neighbour classifier on the L2-normalised codes of the
training split labels the test split.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .cae_digits import digits_batch
from .digits import SEED as SPLIT_SEED
from .digits import TEST_FRACTION, digits_split, random_shift
from .records import write_record

__all__ = [
    "KNN_K",
    "embedding_knn_accuracy",
    "HOLE_SHARE",
    "EVAL_SEED",
    "INK",
    "digit_holes",
    "border_mean_fill",
    "hole_psnr_db",
    "evaluate_filling",
    "train_inpaint_digits",
]

HOLE_SHARE = 0.25  # of the digit's bounding box
EVAL_SEED = 19
INK = 0.2
EPOCHS = 60
BATCH = 64
SHIFT = 1
HOLE_WEIGHT = 0.9  # of the loss inside the hole; the rest is the whole image's
KNN_K = 5


def embedding_knn_accuracy(encode) -> float:
    """``encode(images (N, 1, H, W)) → codes`` (PyTorch at training, the ONNX file at export): the share of the test
    split a k-NN classifier (k = KNN_K) on the L2-normalised codes of the training split labels right."""
    from sklearn.neighbors import KNeighborsClassifier

    split = digits_split()
    train, test = (
        np.asarray(encode(digits_batch(images)), dtype=np.float64) for images in (split.train_images, split.test_images)
    )
    train, test = (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12) for x in (train, test))
    return float(KNeighborsClassifier(n_neighbors=KNN_K).fit(train, split.train_labels).score(test, split.test_labels))


def _ink_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """(top, left, bottom, right), exclusive ends, of the pixels ≥ INK of one [1, H, W] image (the whole image if
    there is none)."""
    ys, xs = np.nonzero(image[0] >= INK)
    if len(ys) == 0:
        return 0, 0, image.shape[1], image.shape[2]
    return int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1


def digit_holes(images: np.ndarray, *, seed: int = EVAL_SEED, share: float = HOLE_SHARE) -> np.ndarray:
    """One rectangle per image (N, 1, H, W) covering ``share`` of its digit's bounding box (aspect 1:2 to 2:1,
    inside the box), as float32 masks of 0/1; the same masks for the same seed."""
    rng = np.random.default_rng(seed)
    masks = np.zeros_like(images, dtype=np.float32)
    for mask, image in zip(masks, images, strict=True):
        top, left, bottom, right = _ink_box(image)
        box_h, box_w = bottom - top, right - left
        area = share * box_h * box_w
        aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))  # w / h
        h = int(np.clip(round(np.sqrt(area / aspect)), 1, box_h))
        w = int(np.clip(round(area / h), 1, box_w))
        y = top + int(rng.integers(0, box_h - h + 1))
        x = left + int(rng.integers(0, box_w - w + 1))
        mask[0, y : y + h, x : x + w] = 1.0
    return masks


def border_mean_fill(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The baseline: each hole filled with the mean of its border, the pixels next to it (8-neighbourhood) outside
    it."""
    filled = images.copy()
    for out, image, mask in zip(filled, images, masks, strict=True):
        hole = mask[0] > 0.5
        padded = np.pad(hole, 1)
        grown = np.zeros_like(hole)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                grown |= padded[1 + dy : 1 + dy + hole.shape[0], 1 + dx : 1 + dx + hole.shape[1]]
        border = grown & ~hole
        out[:, hole] = image[:, border].mean() if border.any() else image.mean()
    return filled


def hole_psnr_db(filled: np.ndarray, clean: np.ndarray, masks: np.ndarray) -> float:
    """Mean over images of 10·log10(1 / MSE) over the hole's pixels only (pixels in [0, 1])."""
    hole = masks > 0.5
    per_image = [
        10 * np.log10(1.0 / max(float(np.mean((f[h] - c[h]) ** 2)), 1e-12))
        for f, c, h in zip(filled.astype(np.float64), clean.astype(np.float64), hole, strict=True)
    ]
    return float(np.mean(per_image))


def evaluate_filling(fill, images: np.ndarray | None = None) -> dict:
    """``fill(images, masks) → filled images`` (any implementation: PyTorch at training, the ONNX file at export)
    on the test split with 25 % rectangles: hole PSNR of the filling and of the border-mean baseline."""
    if images is None:
        images = digits_batch(digits_split().test_images)
    masks = digit_holes(images)
    model_db = hole_psnr_db(np.asarray(fill(images, masks)), images, masks)
    baseline_db = hole_psnr_db(border_mean_fill(images, masks), images, masks)
    return {
        "hole_psnr_db": model_db,
        "baseline_psnr_db": baseline_db,
        "psnr_gain_db": model_db - baseline_db,
        "images": len(images),
        "hole_share_of_image": float(masks.mean()),
    }


def _random_masks(n: int, size: tuple[int, int], clean, generator):
    """Training holes, one per image: a third rectangles anywhere (4–20 px sides), a third 10–50 % of the digit's
    box, a third 1–4 brush strokes (3–5 px wide lines between random points)."""
    import torch

    h, w = size
    masks = torch.zeros(n, 1, h, w)
    kinds = torch.randint(0, 3, (n,), generator=generator)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    for i in range(n):
        if kinds[i] == 0:
            mh, mw = torch.randint(4, 21, (2,), generator=generator).tolist()
            y = int(torch.randint(0, h - mh + 1, (1,), generator=generator))
            x = int(torch.randint(0, w - mw + 1, (1,), generator=generator))
            masks[i, 0, y : y + mh, x : x + mw] = 1.0
        elif kinds[i] == 1:
            top, left, bottom, right = _ink_box(clean[i].numpy())
            share = float(torch.empty(1).uniform_(0.1, 0.5, generator=generator))
            bh, bw = bottom - top, right - left
            mh = max(1, min(bh, round((share * bh * bw) ** 0.5)))
            mw = max(1, min(bw, round(share * bh * bw / mh)))
            y = top + int(torch.randint(0, bh - mh + 1, (1,), generator=generator))
            x = left + int(torch.randint(0, bw - mw + 1, (1,), generator=generator))
            masks[i, 0, y : y + mh, x : x + mw] = 1.0
        else:
            for _ in range(int(torch.randint(1, 5, (1,), generator=generator))):
                (y0, x0, y1, x1) = (torch.rand(4, generator=generator) * torch.tensor([h, w, h, w])).tolist()
                width = float(torch.empty(1).uniform_(1.5, 2.5, generator=generator))
                # distance of every pixel to the segment (y0, x0)–(y1, x1)
                dy, dx = y1 - y0, x1 - x0
                t = (((ys - y0) * dy + (xs - x0) * dx) / max(dy * dy + dx * dx, 1e-6)).clamp(0, 1)
                d = ((ys - (y0 + t * dy)) ** 2 + (xs - (x0 + t * dx)) ** 2).sqrt()
                masks[i, 0][d <= width] = 1.0
    return masks


def train_inpaint_digits(output_dir: Path, *, seed: int = 0, log=print, epochs: int = EPOCHS, lr: float = 2e-3) -> dict:
    """Train ``cae_inpaint`` reproducibly on 2 CPU cores; write ``cae_inpaint.safetensors`` + ``cae_inpaint.json``."""
    import torch
    import torch.nn.functional as F
    from cnnserve.models import build_model
    from safetensors.torch import save_file

    start = time.perf_counter()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    split = digits_split()
    x_train = torch.from_numpy(digits_batch(split.train_images))
    x_test = digits_batch(split.test_images)
    model = build_model("cae_inpaint")  # mean 0, std 1: the graph's normalisation is the identity
    n = len(x_train)
    steps = (n + BATCH - 1) // BATCH
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps, pct_start=0.1)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for i in range(0, n, BATCH):
            clean = x_train[order[i : i + BATCH]]
            clean = random_shift(clean, SHIFT, generator)
            hole = _random_masks(len(clean), clean.shape[-2:], clean, generator)
            reconstruction = model(torch.cat([clean * (1 - hole), hole], dim=1))
            inside = ((reconstruction - clean) ** 2 * hole).sum() / hole.sum().clamp_min(1.0)
            loss = HOLE_WEIGHT * inside + (1 - HOLE_WEIGHT) * F.mse_loss(reconstruction, clean)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(clean)
        if (epoch + 1) % 10 == 0:
            log(f"epoch {epoch + 1}/{epochs}: loss {total / n:.5f} ({time.perf_counter() - start:.0f} s)")

    model.eval()

    def fill(images: np.ndarray, masks: np.ndarray) -> np.ndarray:  # what the exported graph computes
        x, m = torch.from_numpy(images), torch.from_numpy(masks)
        with torch.no_grad():
            return (m * model(torch.cat([x * (1 - m), m], dim=1)) + (1 - m) * x).numpy()

    def encode(images: np.ndarray) -> np.ndarray:  # the code of an image with no hole: the embedding
        x = torch.from_numpy(images)
        with torch.no_grad():
            return model.encode(torch.cat([x, torch.zeros_like(x)], dim=1)).numpy()

    metrics = evaluate_filling(fill, x_test)
    knn = embedding_knn_accuracy(encode)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(output_dir / "cae_inpaint.safetensors"))
    record = {
        "model": "cae_inpaint",
        "dataset": "sklearn-digits",
        "split": f"digits_split(): stratified, test_size={TEST_FRACTION}, random_state={SPLIT_SEED}; all ten digits",
        "train_images": int(n),
        "test_images": metrics["images"],
        "training_holes": "per image: a rectangle anywhere (4-20 px sides), 10-50 % of the digit's box, or 1-4 "
        "brush strokes 3-5 px wide; the network sees the blanked image and the mask",
        "loss": f"{HOLE_WEIGHT} x MSE inside the hole + {1 - HOLE_WEIGHT:.1f} x MSE of the whole image",
        "augmentation": f"random shift of up to {SHIFT} pixel per batch (replicate padding)",
        "epochs": epochs,
        "batch_size": BATCH,
        "seed": seed,
        "evaluation": f"test split, one rectangle per digit covering {HOLE_SHARE:.0%} of its ink's bounding box "
        f"(ink >= {INK}), seed {EVAL_SEED}; PSNR over the hole's pixels, mean over images",
        "hole_share_of_image": round(metrics["hole_share_of_image"], 4),
        "hole_psnr_db": round(metrics["hole_psnr_db"], 3),
        "baseline_border_mean_psnr_db": round(metrics["baseline_psnr_db"], 3),
        "psnr_gain_db": round(metrics["psnr_gain_db"], 3),
        "embedding_knn_accuracy": round(knn, 4),
        "embedding_knn": f"k={KNN_K} on the L2-normalised codes (no hole) of the training split, test split labelled",
        "train_seconds": round(time.perf_counter() - start, 1),  # the report's, not the sidecar's
        "torch": torch.__version__,
    }
    write_record(output_dir / "cae_inpaint.json", record)
    log(
        f"hole PSNR {metrics['hole_psnr_db']:.2f} dB vs border mean {metrics['baseline_psnr_db']:.2f} dB: "
        f"{metrics['psnr_gain_db']:+.2f} dB on {metrics['images']} test digits; embedding k-NN {knn:.2%}; trained in "
        f"{time.perf_counter() - start:.0f} s"
    )
    return record
