"""``/inpaint``: the image with a hole filled in — a PNG of the upload's size, like ``/denoise``.

The hole is a second image, ``mask`` (white = fill, black = keep; grey from 50 % up counts as white; transparency
counts as black), or, without one, the upload's own alpha channel (transparent = fill). The mask must have the
upload's size. The model sees the image and the hole at its input size (the graph blanks the hole, fills it from
what is around, and keeps the known pixels); what the upload has under the hole never reaches the model (it is
replaced by the mean of the known pixels before resizing, so a mask and a transparent hole give the same answer).
The answer keeps every pixel of the upload outside the hole exactly as sent and takes the model's filling, resized
to the upload, inside it. Transparency is the hole when no mask is sent (this endpoint's rule, not the others'
compositing); with a mask, transparent pixels outside the hole are composited on the model's background
(``ModelContract.background``) like every other endpoint's.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from PIL import Image

from ..codecs import png_bytes
from ..contract import ModelContract
from ..errors import BadInput
from ..imaging import Preprocess, preprocess_uint8, to_model_mode
from . import register_task
from .base import FileField, ImageAnswer, Inputs, Outputs, Task, TaskOptions
from .denoise import denoised_image

__all__ = ["InpaintTask", "hole_mask", "model_mask"]

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# A model pixel is part of the hole when at least this share of it is: the model fills a little more than the
# hole rather than less, and the answer keeps the upload's own pixels outside the exact hole anyway.
MODEL_HOLE_COVERAGE = 0.25


def hole_mask(image: Image.Image, mask: Image.Image | None) -> np.ndarray:
    """The hole at the upload's size, bool (H, W): white pixels of ``mask``, or the upload's transparent pixels;
    a :class:`BadInput` a person can act on for a mask that cannot be used."""
    if mask is not None:
        if mask.size != image.size:
            raise BadInput(
                f"the mask is {mask.width}×{mask.height} but the image is {image.width}×{image.height}; "
                "send a mask of the image's size (white = fill, black = keep)"
            )
        hole = np.asarray(to_black_background(mask), dtype=np.uint8) >= 128
        source = "the mask"
    else:
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        if image.mode not in _ALPHA_MODES:
            raise BadInput(
                "nothing marks the hole: send a `mask` image (white = fill, black = keep) or an image whose "
                "transparent pixels are the part to fill"
            )
        hole = np.asarray(image.getchannel("A"), dtype=np.uint8) < 128
        source = "the image's transparency"
    if not hole.any():
        raise BadInput(f"{source} marks nothing to fill; paint the part to fill white (or transparent)")
    if hole.all():
        raise BadInput(f"{source} covers the whole image, so nothing is left to fill the hole from")
    return hole


def to_black_background(mask: Image.Image) -> Image.Image:
    """A mask in any mode → grey ``L``, transparent parts black (keep)."""
    if mask.mode == "P" and "transparency" in mask.info:
        mask = mask.convert("RGBA")
    if mask.mode in _ALPHA_MODES:
        rgba = mask.convert("RGBA")
        mask = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    return to_model_mode(mask, 1)


def model_mask(hole: np.ndarray, pre: Preprocess) -> np.ndarray:
    """The hole at the model's input size, float32 [1, H, W] of 0/1, resized the way the image is."""
    grey = Image.fromarray(hole.astype(np.uint8) * 255)
    resized = preprocess_uint8(grey, Preprocess(pre.input_size, 1, pre.resize_size, pre.max_size, "bilinear"))
    mask = resized >= 255 * MODEL_HOLE_COVERAGE
    return (mask if mask.any() else resized > 0).astype(np.float32)  # a hole smaller than a model pixel still counts


def _without_hole(
    upload: Image.Image, hole: np.ndarray, channels: int, background: tuple[int, int, int]
) -> Image.Image:
    """The upload as the model sees it (grey or RGB; transparency outside the hole on the model's background) with
    the hole's pixels set to the mean of the others: nothing under the hole leaks into its border when the image is
    resized."""
    arr = np.asarray(to_model_mode(upload, channels, background)).copy()
    arr[hole] = np.rint(arr[~hole].mean(axis=0)).astype(np.uint8)
    return Image.fromarray(arr)


def _filled(
    upload: Image.Image, inpainted: np.ndarray, hole: np.ndarray, background: tuple[int, int, int]
) -> Image.Image:
    """The upload outside the hole (as the model saw it), the model's filling (at the upload's size) inside it."""
    filling = denoised_image(inpainted, upload)
    original = to_model_mode(upload, 1 if filling.mode == "L" else 3, background)
    out = np.asarray(original).copy()
    out[hole] = np.asarray(filling)[hole]
    return Image.fromarray(out)


@register_task
class InpaintTask(Task):
    name = "inpaint"
    route = "/inpaint"
    title = "Inpaint"
    summary = "The image with the hole filled in (a `mask` image, white = fill, or the upload's transparency): a PNG."
    description = (
        "Send the image and a `mask` of the same size (white = fill, black = keep), or one image whose transparent "
        "pixels are the hole. The answer has the upload's size; pixels outside the hole are the upload's own."
    )
    serves = ("inpainting",)
    default_model = "cae_inpaint"
    files = (
        FileField("image"),
        FileField("mask", required=False, description="white = fill, black = keep; default: the image's alpha"),
    )
    record_key = "inpainted"

    def answer_bytes_per_pixel(self, options: TaskOptions) -> int:
        # the hole (1), the filling at the upload's size and the upload in the model's mode (4 each), the PNG
        return 12

    def prepare(self, contract: ModelContract, uploads: Mapping[str, Image.Image], options: TaskOptions) -> Inputs:
        upload = uploads["image"]
        hole = hole_mask(upload, uploads.get("mask"))
        pixels = preprocess_uint8(
            _without_hole(upload, hole, contract.in_channels, contract.background), contract.preprocess
        )
        mask = model_mask(hole, contract.preprocess)
        return Inputs(images=pixels[None], rows={"mask": mask[None]}, upload=upload, pixels=pixels, context=hole)

    def respond(self, model, contract, outputs: Outputs, inputs: Inputs, options: TaskOptions) -> ImageAnswer:
        filled = _filled(inputs.upload, outputs["inpainted"][0], inputs.context, contract.background)
        return ImageAnswer(png=png_bytes(filled))
