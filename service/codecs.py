"""Encoding answers that are images: class-index masks, colour overlays, denoised images, error heat maps (PNG)."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

__all__ = ["png_bytes", "png_base64", "palette", "colour_overlay", "heat_map"]


def png_bytes(array_or_image: np.ndarray | Image.Image) -> bytes:
    img = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=3)
    return buf.getvalue()


def png_base64(array_or_image: np.ndarray | Image.Image) -> str:
    return base64.b64encode(png_bytes(array_or_image)).decode("ascii")


def palette(num_classes: int) -> np.ndarray:
    """A fixed, distinct colour per class index (background black), the same in every answer."""
    rng = np.random.default_rng(7)
    colours = rng.integers(40, 256, size=(max(num_classes, 1), 3)).astype(np.uint8)
    base = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48]], np.uint8)
    colours[: min(len(base), len(colours))] = base[: min(len(base), len(colours))]
    return colours


def colour_overlay(image: Image.Image, mask: np.ndarray, num_classes: int, alpha: float = 0.5) -> Image.Image:
    """The upload with each non-background class painted over it in its palette colour."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    colours = palette(num_classes)[mask].astype(np.float32)
    painted = np.where((mask > 0)[..., None], (1 - alpha) * rgb + alpha * colours, rgb)
    return Image.fromarray(np.clip(painted, 0, 255).astype(np.uint8))


def heat_map(values: np.ndarray) -> Image.Image:
    """A 2-D map of non-negative values (per-pixel reconstruction error) as a black → red → yellow PNG."""
    v = np.asarray(values, dtype=np.float32)
    v = v / (float(v.max()) or 1.0)
    rgb = np.stack([np.clip(2 * v, 0, 1), np.clip(2 * v - 1, 0, 1), np.zeros_like(v)], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8))
