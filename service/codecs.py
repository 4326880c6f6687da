"""Encoding answers that are images: class-index masks, colour overlays, denoised images, error heat maps (PNG),
and the ``render=true`` pictures of detections (boxes, label + score tags, instance masks) drawn with Pillow.

Pictures at the upload's size are computed in bands of rows or within each mask's own box, so drawing on a large
upload holds the picture and small pieces of it, never a float copy of the whole (service/app/work.py budgets the
rest)."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .imaging import to_model_mode

__all__ = [
    "png_bytes",
    "png_base64",
    "palette",
    "colour_overlay",
    "heat_map",
    "blend_mask",
    "detection_colour",
    "draw_detections",
    "draw_legend",
]


_BAND_PIXELS = 1 << 20  # pixels per band of rows when a picture is computed band by band


def png_bytes(array_or_image: np.ndarray | Image.Image) -> bytes:
    img = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=3)
    return buf.getvalue()


_B64_PIECE = 3 * 2**20  # bytes encoded per call: a multiple of 3, so the pieces join into one base64 text


def png_base64(array_or_image: np.ndarray | Image.Image) -> str:
    """The picture as base64 PNG text, encoded a piece at a time (one call over a large PNG would hold the GIL, and
    with it the event loop, for its whole length)."""
    data = png_bytes(array_or_image)
    if len(data) <= _B64_PIECE:
        return base64.b64encode(data).decode("ascii")
    view = memoryview(data)
    return "".join(base64.b64encode(view[i : i + _B64_PIECE]).decode("ascii") for i in range(0, len(data), _B64_PIECE))


def palette(num_classes: int) -> np.ndarray:
    """A fixed, distinct colour per class index (background black), the same in every answer."""
    rng = np.random.default_rng(7)
    colours = rng.integers(40, 256, size=(max(num_classes, 1), 3)).astype(np.uint8)
    base = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48]], np.uint8)
    colours[: min(len(base), len(colours))] = base[: min(len(base), len(colours))]
    return colours


def colour_overlay(image: Image.Image, mask: np.ndarray, num_classes: int, alpha: float = 0.5) -> Image.Image:
    """The upload with each non-background class painted over it in its palette colour (a band of rows at a time;
    half and half in integers, which truncate like the float blend they replace)."""
    colours = palette(num_classes)
    out = Image.new("RGB", image.size)
    rows = max(1, _BAND_PIXELS // max(1, image.width))
    for top in range(0, image.height, rows):
        bottom = min(image.height, top + rows)
        band_mask = mask[top:bottom]
        rgb = np.asarray(image.crop((0, top, image.width, bottom)).convert("RGB"))
        if alpha == 0.5:
            blended = ((rgb.astype(np.uint16) + colours[band_mask]) >> 1).astype(np.uint8)
        else:
            mixed = (1 - alpha) * rgb.astype(np.float32) + alpha * colours[band_mask].astype(np.float32)
            blended = np.clip(mixed, 0, 255).astype(np.uint8)
        out.paste(Image.fromarray(np.where((band_mask > 0)[..., None], blended, rgb)), (0, top))
    return out


def heat_map(values: np.ndarray) -> Image.Image:
    """A 2-D map of non-negative values (per-pixel reconstruction error) as a black → red → yellow PNG."""
    v = np.asarray(values, dtype=np.float32)
    v = v / (float(v.max()) or 1.0)
    rgb = np.stack([np.clip(2 * v, 0, 1), np.clip(2 * v - 1, 0, 1), np.zeros_like(v)], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


def _text_colour(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light tags, white on dark ones (ITU-R BT.601 luma)."""
    return (0, 0, 0) if 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] > 140 else (255, 255, 255)


def _font_for(size: tuple[int, int]) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in font, larger on larger pictures (about 1/50 of the longer side, at least 10 px)."""
    return ImageFont.load_default(size=max(10, round(max(size) / 50)))


def detection_colour(index: int, num_classes: int) -> np.ndarray:
    """The colour a detection of class ``index`` is drawn in (class 0 of a detector is a real class: no black)."""
    num_classes = max(num_classes, 1)
    return palette(num_classes + 1)[index % num_classes + 1]


def blend_mask(rgb: Image.Image, mask: np.ndarray, colour: np.ndarray, alpha: float = 0.5) -> None:
    """Blend ``colour`` into the pixels of ``rgb`` (in place) where the (height, width) boolean ``mask`` is set, working
    only inside the mask's bounding box."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    region = np.asarray(rgb.crop((left, top, right, bottom)), dtype=np.float32)
    inside = mask[top:bottom, left:right]
    region[inside] = (1 - alpha) * region[inside] + alpha * colour.astype(np.float32)
    rgb.paste(Image.fromarray(np.clip(np.rint(region), 0, 255).astype(np.uint8)), (left, top))


def draw_detections(
    image: Image.Image,
    detections: list[dict],
    num_classes: int,
    masks: Iterable[np.ndarray] | None = None,
    alpha: float = 0.5,
    *,
    copy: bool = True,
) -> Image.Image:
    """The upload (as RGB) with each detection drawn in its class's colour: its mask blended in (instance models),
    its box outlined inside the box's pixels, and a ``label score`` tag just above the box (inside its top edge
    when the box touches the image's top). Nothing else of the picture changes.

    ``detections`` are the answer's ``{"box", "index", "label", "score"}`` (boxes in the image's pixels);
    ``masks`` one boolean (height, width) array per detection, taken one at a time (a generator keeps only one in
    memory). ``copy=False`` draws on ``image`` itself when it is already RGB (a caller done with the upload).
    """
    num_classes = max(num_classes, 1)  # a model without labels: one colour for all
    colours = palette(num_classes + 1)  # index + 1: class 0 of a detector is a real class, not black background
    rgb = to_model_mode(image, 3)  # as the model saw it: transparency on white, 16-bit scaled
    if copy and rgb is image:
        rgb = rgb.copy()
    if masks is not None:
        for det, mask in zip(detections, masks, strict=True):
            blend_mask(rgb, mask, colours[det["index"] % num_classes + 1], alpha)
    width, height = rgb.size
    draw = ImageDraw.Draw(rgb)
    font = _font_for(rgb.size)
    line = max(1, round(max(width, height) / 300))
    for det in detections:
        colour = tuple(int(c) for c in colours[det["index"] % num_classes + 1])
        x1, y1, x2, y2 = det["box"]
        # The pixels the box covers: from the one holding (x1, y1) to the one holding (x2, y2), inside the image.
        left, top = min(int(x1), width - 1), min(int(y1), height - 1)
        right, bottom = max(min(int(np.ceil(x2)) - 1, width - 1), left), max(min(int(np.ceil(y2)) - 1, height - 1), top)
        draw.rectangle((left, top, right, bottom), outline=colour, width=line)
        text = f"{det['label']} {det['score']:.2f}"
        tx0, ty0, tx1, ty1 = draw.textbbox((0, 0), text, font=font)
        tag_w, tag_h = tx1 - tx0 + 2, ty1 - ty0 + 2
        tag_top = top - tag_h if top - tag_h >= 0 else top
        draw.rectangle((left, tag_top, left + tag_w - 1, tag_top + tag_h - 1), fill=colour)
        draw.text((left + 1 - tx0, tag_top + 1 - ty0), text, fill=_text_colour(colour), font=font)
    return rgb


def draw_legend(
    image: Image.Image, entries: list[tuple[int, str]], num_classes: int, *, copy: bool = True
) -> Image.Image:
    """A semantic overlay with a key in its top-left corner: one ``swatch label`` row per ``(class index, label)``
    of ``entries``, in the overlay's palette colours, on black. Nothing outside the key's box changes. ``copy=False``
    draws on an RGB ``image`` itself."""
    out = image if not copy and image.mode == "RGB" else image.convert("RGB")
    if not entries:
        return out
    colours = palette(num_classes)
    draw = ImageDraw.Draw(out)
    font = _font_for(out.size)
    boxes = [draw.textbbox((0, 0), label, font=font) for _, label in entries]
    row = max(b[3] - b[1] for b in boxes) + 4
    swatch = row - 4
    width = swatch + 6 + max(b[2] - b[0] for b in boxes) + 3
    draw.rectangle((0, 0, width - 1, row * len(entries) + 1), fill=(0, 0, 0))
    for i, ((index, label), (x0, y0, _, _)) in enumerate(zip(entries, boxes, strict=True)):
        top = 2 + i * row
        draw.rectangle((2, top, 2 + swatch - 1, top + swatch - 1), fill=tuple(int(c) for c in colours[index]))
        draw.text((swatch + 6 - x0, top - y0), label, fill=(255, 255, 255), font=font)
    return out
