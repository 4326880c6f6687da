"""Synthetic shapes scenes: circles, squares and triangles on textured, noisy backgrounds.

One generator serves every dense/detection demo: the U-Net learns the per-pixel ``mask``, YOLO learns the
``boxes``/``labels`` of the same scenes. Everything is drawn from a seeded ``numpy`` generator, so a data set is
its seed: the held-out set of the README is ``make_dataset(n, seed=HELD_OUT_SEED)``. Shapes do not overlap, so
every box is the tight extent of one whole object.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["CLASSES", "TRAIN_SEED", "HELD_OUT_SEED", "ShapesSample", "make_sample", "make_dataset", "resize_sample"]

CLASSES = ("background", "circle", "square", "triangle")
TRAIN_SEED = 0
HELD_OUT_SEED = 12345


@dataclass(frozen=True)
class ShapesSample:
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) uint8, class index per pixel (0 = background)
    boxes: np.ndarray  # (K, 4) float32, x1, y1, x2, y2 in pixels (x2/y2 exclusive)
    labels: np.ndarray  # (K,) int64, 1 = circle, 2 = square, 3 = triangle


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth colour gradient + low-frequency stripes or blobs + pixel noise: texture the model must ignore."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    c0, c1 = rng.uniform(0, 255, size=(2, 3))
    t = (xx * np.cos(a := rng.uniform(0, np.pi)) + yy * np.sin(a)) / (height + width)
    base = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    freq = rng.uniform(0.03, 0.25)
    stripes = np.sin((xx * np.cos(b := rng.uniform(0, np.pi)) + yy * np.sin(b)) * freq + rng.uniform(0, 6.3))
    base += stripes[..., None] * rng.uniform(5, 40)
    noisy = base + rng.normal(0, rng.uniform(3, 20), size=base.shape)
    img = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    return np.asarray(img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0, 1.2)))), dtype=np.float32)


def _polygon(kind: int, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]] | None:
    if kind == 2:  # square, axis-aligned: its box is its outline
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if kind == 3:  # triangle, equilateral, any rotation
        return [
            (cx + r * np.cos(angle + k * 2 * np.pi / 3), cy + r * np.sin(angle + k * 2 * np.pi / 3)) for k in range(3)
        ]
    return None


def make_sample(
    rng: np.random.Generator, size: tuple[int, int] = (128, 128), max_shapes: int = 4, min_radius: int = 8
) -> ShapesSample:
    """One scene of 1..max_shapes non-overlapping shapes, each in a colour that stands out from its surroundings."""
    height, width = size
    background = _background(rng, height, width)
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
    mask = Image.new("L", (width, height), 0)
    draw_img, draw_mask = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    placed: list[tuple[float, float, float]] = []
    boxes, labels = [], []
    max_radius = max(min_radius + 2, min(height, width) // 5)
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        for _attempt in range(30):
            r = float(rng.uniform(min_radius, max_radius))
            cx, cy = float(rng.uniform(r + 1, width - r - 1)), float(rng.uniform(r + 1, height - r - 1))
            if all(np.hypot(cx - px, cy - py) > (r + pr) * 1.45 + 2 for px, py, pr in placed):
                break
        else:
            continue
        kind = int(rng.integers(1, 4))
        local = background[int(cy), int(cx)]
        colour = tuple(int(v) for v in np.where(local > 127, rng.uniform(0, 90, 3), rng.uniform(165, 255, 3)))
        polygon = _polygon(kind, cx, cy, r, float(rng.uniform(0, 2 * np.pi)))
        shape_mask = Image.new("L", (width, height), 0)
        if polygon is None:
            ellipse = (cx - r, cy - r, cx + r, cy + r)
            draw_img.ellipse(ellipse, fill=colour)
            draw_mask.ellipse(ellipse, fill=kind)
            ImageDraw.Draw(shape_mask).ellipse(ellipse, fill=1)
        else:
            draw_img.polygon(polygon, fill=colour)
            draw_mask.polygon(polygon, fill=kind)
            ImageDraw.Draw(shape_mask).polygon(polygon, fill=1)
        ys, xs = np.nonzero(np.asarray(shape_mask))
        if len(xs) == 0:
            continue
        placed.append((cx, cy, r))
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        labels.append(kind)
    # Sensor noise over everything, shapes included.
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, rng.uniform(2, 10), size=(height, width, 3))
    return ShapesSample(
        image=np.clip(pixels, 0, 255).astype(np.uint8),
        mask=np.asarray(mask, dtype=np.uint8).copy(),
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
    )


def make_dataset(
    n: int, *, size: tuple[int, int] = (128, 128), seed: int = TRAIN_SEED, max_shapes: int = 4
) -> list[ShapesSample]:
    rng = np.random.default_rng(seed)
    return [make_sample(rng, size, max_shapes) for _ in range(n)]


def resize_sample(sample: ShapesSample, size: tuple[int, int]) -> ShapesSample:
    """A scene at the model's input size (H, W), as the service sees an upload: the image resized with PIL bilinear
    (the service's resize), boxes scaled, and each mask pixel the class that covers most of it after the same
    resize (nearest neighbour would drop the thin parts a shrink leaves)."""
    h, w = sample.image.shape[:2]
    if (h, w) == tuple(size):
        return sample
    out_h, out_w = size
    sx, sy = out_w / w, out_h / h
    shares = [
        np.asarray(
            Image.fromarray((sample.mask == k).astype(np.uint8) * 255).resize((out_w, out_h), Image.Resampling.BILINEAR)
        )
        for k in range(len(CLASSES))
    ]
    return ShapesSample(
        image=np.asarray(Image.fromarray(sample.image).resize((out_w, out_h), Image.Resampling.BILINEAR)),
        mask=np.argmax(np.stack(shares), axis=0).astype(np.uint8),
        boxes=sample.boxes * np.array([sx, sy, sx, sy], dtype=np.float32),
        labels=sample.labels,
    )
