"""Image decoding and pre-processing, written once and shared by the service, the batch scorer and the tests.

Torch-free on purpose: the serving image has no torch. The resize/crop arithmetic reproduces torchvision's eval
transforms on PIL images (``Resize(shorter side)`` then ``CenterCrop``), so a model that was trained with
torchvision's recipe sees the same pixels here. Normalisation by mean/std is *not* done here: it lives inside
the ONNX graph, so every runtime that runs the file gets it right.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import BadInput, PayloadTooLarge

try:  # libjpeg-turbo with DCT-domain scaling at any multiple of 1/8 (Pillow's draft offers 1/2, 1/4, 1/8 only)
    import simplejpeg
except ImportError:  # Pillow decodes every JPEG then
    simplejpeg = None

__all__ = [
    "Preprocess",
    "decode_bytes",
    "decode_image",
    "load_image",
    "open_image",
    "preprocess_bytes",
    "reduce_image",
    "draft_request",
    "detection_resize_size",
    "to_model_mode",
    "preprocess",
    "preprocess_uint8",
    "to_unit_float",
]

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
# A shorter-side resize of an extreme strip explodes; refuse beyond this many pixels in the intermediate image (a
# 256-pixel resize: aspect ratios up to about 120:1).
MAX_RESIZED_PIXELS = 8_000_000
# Formats we promise to read. Others Pillow happens to know (PDF, EPS, ...) are refused with a clear message.
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO")
# ``Image.info`` key set on an image decoded at reduced size (DCT scaling): its pixels are already an
# approximation of the full-size decode, so :func:`preprocess_uint8` resizes only the part the crop keeps.
DRAFTED = "cnnserve.drafted"
# EXIF orientation → the transpose that makes the image upright (what ``ImageOps.exif_transpose`` applies).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class Preprocess:
    """How one model's input is made from an image (a view of its :class:`~service.contract.ModelContract`)."""

    input_size: tuple[int, int]
    in_channels: int = 3
    resize_size: int | None = None
    max_size: int | None = None
    interpolation: str = "bilinear"
    background: tuple[int, int, int] = (255, 255, 255)  # what transparent pixels are composited on


def draft_request(width: int, height: int, pre: Preprocess, min_ratio: float) -> tuple[int, int] | None:
    """The smallest size a JPEG may be decoded at for this model, or ``None`` for full size.

    libjpeg-turbo decodes at 1/2, 1/4 or 1/8 of the size in the DCT domain (fast, SIMD-accelerated; its other
    multiples of 1/8 are slower than a full decode), which skips most of the decoding work, and the resize then
    starts from fewer pixels.
    ``min_ratio`` says how close to the resize's own target the decoded image must stay: 1.0 never decodes below
    what the resize needs (no upsampling), 0.9 allows the resize to enlarge by up to 1/0.9. Detection-style resizes
    (``max_size``) are left alone: their answers are in the upload's pixels and the service maps them back from the
    decoded size. ``None`` when not even 1/2 of the size would do; else the size at the smallest of 1/2, 1/4, 1/8
    that covers the need.
    """
    if min_ratio <= 0 or pre.max_size is not None:
        return None
    if pre.resize_size is None:
        need_w, need_h = pre.input_size[1] * min_ratio, pre.input_size[0] * min_ratio
    else:
        scale = pre.resize_size * min_ratio / min(width, height)
        need_w, need_h = width * scale, height * scale
    scale = 1
    while scale < 8 and need_w * scale * 2 <= width and need_h * scale * 2 <= height:
        scale *= 2
    if scale == 1:
        return None
    return math.ceil(width / scale), math.ceil(height / scale)


def _decode_scaled(img: Image.Image, data: bytes, need: tuple[int, int], channels: int) -> Image.Image | None:
    """A JPEG decoded by libjpeg-turbo (simplejpeg) at the reduced size ``need`` (from :func:`draft_request`, in
    the file's stored orientation), then made upright; ``None`` where Pillow should decode it (no simplejpeg, CMYK,
    or a file libjpeg-turbo refuses — Pillow then says what is wrong)."""
    orientation = img.getexif().get(0x0112, 1)
    if simplejpeg is None or img.mode not in ("RGB", "L") or orientation not in (1, *_ORIENTATION):
        return None
    need_w, need_h = need  # in the stored orientation, as draft_request computed it from the header
    grey = img.mode == "L" or channels == 1
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace="GRAY" if grey else "RGB", min_width=need_w, min_height=need_h)
    except ValueError:
        return None
    out = Image.fromarray(pixels[:, :, 0] if grey else pixels)
    if orientation in _ORIENTATION:
        out = out.transpose(_ORIENTATION[orientation])
    if out.width < img.width or out.height < img.height:
        out.info[DRAFTED] = True
    return out


# Pillow keeps L, P and 1 in one byte per pixel, the 16-bit modes in two and every other mode (RGB included) in four.
_STORED_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
# ``Image.info`` keys of an opened JPEG that may be decoded at reduced size: the size and channels asked for, and
# the file's bytes (libjpeg-turbo decodes from them).
_SCALE_REQUEST = "cnnserve.scale-request"
_SOURCE = "cnnserve.source"
_BAND_PIXELS = 1 << 20  # conversions over whole images run in bands of rows of about this many pixels


def open_image(
    data: bytes, *, max_pixels: int = 50_000_000, draft_for: Preprocess | None = None, draft_ratio: float = 1.0
) -> Image.Image:
    """Bytes → an opened image whose header passed every check, with no pixel decoded yet, or a :class:`BadInput`.

    The pixel count is checked from the header, so a small file that claims a huge canvas (a decompression bomb)
    costs nothing. With ``draft_for``, a JPEG much larger than that model's input is marked to be decoded at reduced
    size (see :func:`draft_request`) by :func:`load_image`; only for answers that do not depend on the upload's
    pixel geometry (classification). :func:`decode_bytes` says what decoding it will cost.
    """
    if not data:
        raise BadInput("the uploaded image is empty (0 bytes); send a JPEG, PNG, WebP, BMP or GIF file")
    with warnings.catch_warnings():
        # Pillow's own bomb check would only warn up to 2× its limit; ours is stricter and explicit.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:  # beyond even Pillow's hard limit (~179 M pixels)
            raise PayloadTooLarge(f"the image is too large to decode ({exc}); send a smaller image") from None
        except UnidentifiedImageError:
            raise BadInput("the upload is not an image we can read; send a JPEG, PNG, WebP, BMP or GIF file") from None
        except Exception as exc:  # Pillow raises many types on malformed headers
            raise BadInput(f"the image header could not be read ({exc}); is the file complete?") from None
        if img.format not in SUPPORTED_FORMATS:
            raise BadInput(f"{img.format} files are not supported; send a JPEG, PNG, WebP, BMP or GIF file")
        width, height = img.size
        if width < 1 or height < 1:
            raise BadInput(f"the image has no pixels ({width}×{height})")
        if width * height > max_pixels:
            raise PayloadTooLarge(
                f"the image is {width}×{height} = {width * height:,} pixels, over the limit of {max_pixels:,}; "
                "send a smaller image"
            )
        try:
            img.seek(0)  # first frame of a GIF/WebP animation
            if draft_for is not None and img.format == "JPEG":
                request = draft_request(width, height, draft_for, draft_ratio)
                if request is not None:  # decoded at reduced size by load_image
                    img.info[_SCALE_REQUEST] = (request, draft_for.in_channels)
                    img.info[_SOURCE] = data
        except Exception as exc:
            raise BadInput(f"the image data is broken or truncated ({exc}); send the complete file") from None
    return img


def decode_bytes(img: Image.Image) -> int:
    """The most memory decoding an :func:`open_image` result with :func:`load_image` (``reduce=True``) holds at
    once: the decoded image and its reduced or upright copy (Pillow stores most modes in four bytes per pixel),
    plus a progressive JPEG's coefficient buffers (two bytes per pixel and component). A JPEG to be decoded at
    reduced size counts its reduced pixels."""
    pixels = img.width * img.height
    if _SCALE_REQUEST in img.info:
        (need_w, need_h), _ = img.info[_SCALE_REQUEST]
        pixels = need_w * need_h
    peak = pixels * (_STORED_BYTES.get(img.mode, 4) + 4)
    if img.format == "JPEG" and img.info.get("progressive"):
        peak += pixels * 2 * len(img.getbands())
    return peak


def preprocess_bytes(size: tuple[int, int], pre: Preprocess) -> int:
    """The most memory :func:`preprocess_uint8` holds beyond the upload: a converted copy of it (a colour upload for
    a grey model, or the reverse) and the resized image before its crop."""
    width, height = size
    resized = pre.input_size[0] * pre.input_size[1]
    if pre.resize_size is not None and pre.max_size is not None:
        new_h, new_w = detection_resize_size(height, width, pre.resize_size, pre.max_size)
        resized = new_h * new_w
    elif pre.resize_size is not None:
        short, long = min(width, height), max(width, height)
        resized = min(MAX_RESIZED_PIXELS, pre.resize_size * max(pre.resize_size, long * pre.resize_size // short))
    return 4 * (width * height + resized)


def load_image(
    img: Image.Image, *, reduce: bool = False, background: tuple[int, int, int] = (255, 255, 255)
) -> Image.Image:
    """An :func:`open_image` result → fully decoded and upright (EXIF orientation), or a :class:`BadInput`.

    ``reduce=True`` also reduces it with :func:`reduce_image` (transparency on ``background``, the model's) before
    turning it upright, so that no full-size copy of a 16-bit, float or transparent image is ever made (what the
    service does; answers come out the same). A JPEG
    marked by :func:`open_image` for a reduced decode is decoded by libjpeg-turbo at that size (or by Pillow's
    draft, where libjpeg-turbo cannot)."""
    try:
        if _SCALE_REQUEST in img.info:
            (request, channels), data = img.info.pop(_SCALE_REQUEST), img.info.pop(_SOURCE)
            scaled = _decode_scaled(img, data, request, channels)
            if scaled is not None:
                return reduce_image(scaled, background) if reduce else scaled
            img.draft("L" if channels == 1 else "RGB", request)
            img.info[DRAFTED] = True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
        orientation = img.getexif().get(0x0112, 1)  # read before reducing: the reduced copy carries no EXIF
        if reduce:
            img = reduce_image(img, background)
        method = _ORIENTATION.get(orientation)
        return img if method is None else img.transpose(method)
    except BadInput:
        raise
    except Exception as exc:
        raise BadInput(f"the image data is broken or truncated ({exc}); send the complete file") from None


def decode_image(
    data: bytes, *, max_pixels: int = 50_000_000, draft_for: Preprocess | None = None, draft_ratio: float = 1.0
) -> Image.Image:
    """Bytes → a fully loaded, upright PIL image in its own mode (first frame of an animation), or a
    :class:`BadInput` (:func:`open_image` then :func:`load_image`)."""
    return load_image(open_image(data, max_pixels=max_pixels, draft_for=draft_for, draft_ratio=draft_ratio))


def _bands(img: Image.Image):
    """(top, band) for horizontal bands of ``img`` of about ``_BAND_PIXELS`` pixels each."""
    rows = max(1, _BAND_PIXELS // max(1, img.width))
    for top in range(0, img.height, rows):
        yield top, img.crop((0, top, img.width, min(img.height, top + rows)))


def _sixteen_bit_to_8(img: Image.Image) -> Image.Image:
    """Pillow's ``convert("L")`` clips 16-bit values instead of scaling them; scale explicitly, band by band (no
    full-size float copy): float images stretched to their range, 16-bit ones divided by 257."""
    if img.mode == "F":
        lo, hi = (float(v) for v in img.getextrema())
    else:
        divisor = 257.0 if img.mode != "I" or img.getextrema()[1] > 255 else 1.0
    out = Image.new("L", img.size)
    for top, band in _bands(img):
        arr = np.asarray(band, dtype=np.float64)
        arr = (arr - lo) / (hi - lo or 1.0) * 255.0 if img.mode == "F" else arr / divisor
        out.paste(Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L"), (0, top))
    return out


_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _on_background(img: Image.Image, target: str, background: tuple[int, int, int]) -> Image.Image:
    """Transparency composited on ``background``, band by band, as ``target``."""
    out = Image.new(target, img.size)
    for top, band in _bands(img):
        rgba = band.convert("RGBA")
        backdrop = Image.new("RGBA", rgba.size, (*background, 255))
        out.paste(Image.alpha_composite(backdrop, rgba).convert(target), (0, top))
    return out


def reduce_image(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """A decoded upload in the fewest bytes that keep every answer the same: 16-bit and float images scaled to
    8-bit grey, transparency composited on ``background`` (the model's; grey images stay grey), every other mode
    unchanged.

    ``to_model_mode(reduce_image(img, b), c, b)`` equals ``to_model_mode(img, c, b)``; the work runs in bands, so
    reducing a large image holds the original and the result, never a float copy of it."""
    if img.mode in _HIGH_DEPTH_MODES:
        return _sixteen_bit_to_8(img)
    if img.mode == "P" and "transparency" in img.info:
        return _on_background(img, "RGB", background)
    if img.mode in _ALPHA_MODES:
        grey = img.mode in ("LA", "La") and len(set(background)) == 1  # grey on a coloured background is colour
        return _on_background(img, "L" if grey else "RGB", background)
    return img


def to_model_mode(img: Image.Image, channels: int, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any Pillow mode → ``RGB`` (3 channels) or ``L`` (1 channel), the way the model would expect it to look.

    Transparency is composited on ``background``: the model's own (``ModelContract.background``: white for photos,
    where a transparent area reads as paper; black for the digits demos, which learned light ink on black, so a
    white digit on a transparent background reads as the digit). 16-bit and float images are scaled rather than
    clipped, CMYK and palette images go through Pillow's conversions.
    """
    target = "L" if channels == 1 else "RGB"
    if img.mode in _HIGH_DEPTH_MODES:
        img = _sixteen_bit_to_8(img)
    elif img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info):
        img = _on_background(img, target, background)
    return img if img.mode == target else img.convert(target)


def detection_resize_size(height: int, width: int, min_size: int = 800, max_size: int = 1333) -> tuple[int, int]:
    """torchvision's detection resize: scale so the shorter side is ``min_size`` unless the longer side would pass
    ``max_size``; the size is floored like ``interpolate(scale_factor=..., recompute_scale_factor=True)``."""
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return max(1, int(math.floor(height * scale))), max(1, int(math.floor(width * scale)))


def _resize_crop(img: Image.Image, pre: Preprocess) -> Image.Image:
    out_h, out_w = pre.input_size
    resample = _RESAMPLE[pre.interpolation]
    if pre.resize_size is None:
        return img.resize((out_w, out_h), resample)
    if pre.max_size is not None:  # keep the aspect, no crop: the model takes any size
        new_h, new_w = detection_resize_size(img.height, img.width, pre.resize_size, pre.max_size)
        return img if (new_w, new_h) == img.size else img.resize((new_w, new_h), resample)
    # torchvision Resize(int): the shorter side becomes resize_size, the longer keeps the aspect (truncated).
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = pre.resize_size, int(pre.resize_size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if new_w * new_h > MAX_RESIZED_PIXELS:  # a 60000×1 strip would become 15 M × 256 pixels
        raise BadInput(
            f"the image's aspect ratio ({w}×{h}) is too extreme to resize for this model; crop it closer to square"
        )
    if img.info.get(DRAFTED) and new_w >= out_w and new_h >= out_h:
        # A reduced decode is an approximation already: resize only the part the centre crop keeps, straight to
        # the crop's size (the same scale, the same sample positions up to rounding; half the pixels or less).
        top, left = int(round((new_h - out_h) / 2.0)), int(round((new_w - out_w) / 2.0))
        sx, sy = w / new_w, h / new_h
        return img.resize((out_w, out_h), resample, box=(left * sx, top * sy, (left + out_w) * sx, (top + out_h) * sy))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), resample)
    if new_w < out_w or new_h < out_h:
        # Smaller than the crop: torchvision's CenterCrop pads with zeros, (crop − size) // 2 before.
        canvas = Image.new(img.mode, (max(new_w, out_w), max(new_h, out_h)))
        canvas.paste(img, ((out_w - new_w) // 2 if out_w > new_w else 0, (out_h - new_h) // 2 if out_h > new_h else 0))
        img = canvas
        new_w, new_h = img.size
    # torchvision CenterCrop: offsets rounded half to even, like its int(round(...)).
    top = int(round((new_h - out_h) / 2.0))
    left = int(round((new_w - out_w) / 2.0))
    return img.crop((left, top, left + out_w, top + out_h))


def preprocess_uint8(img: Image.Image, pre: Preprocess) -> np.ndarray:
    """A decoded image → the model's input pixels for one image: uint8 ``[C, H, W]`` (0–255).

    What the service passes between its processes: a quarter of float32's bytes. ``LoadedModel.run`` converts to
    the file's input type (float32 [0, 1], or uint8 for a variant that casts in its graph)."""
    img = _resize_crop(to_model_mode(img, pre.in_channels, pre.background), pre)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None, :, :] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def to_unit_float(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels → float32 in [0, 1] (float input is returned as float32 unchanged)."""
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / np.float32(255.0)
    return pixels.astype(np.float32, copy=False)


def preprocess(img: Image.Image, pre: Preprocess) -> np.ndarray:
    """A decoded image → the model's input tensor for one image: float32 ``[C, H, W]`` in [0, 1]."""
    return to_unit_float(preprocess_uint8(img, pre))
