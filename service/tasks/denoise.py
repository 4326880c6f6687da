"""``/denoise``: the image as the autoencoder reconstructs it (noise removed), a PNG of the upload's size."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..codecs import png_bytes
from . import register_task
from .base import ImageAnswer, Outputs, Task, TaskOptions

__all__ = ["DenoiseTask", "denoised_image"]

_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def denoised_image(reconstruction: np.ndarray, upload: Image.Image) -> Image.Image:
    """The reconstruction [C, h, w] in [0, 1] at the upload's size, grey for grey uploads, RGB otherwise."""
    arr = np.clip(np.rint(np.asarray(reconstruction, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))
    img = img.resize(upload.size, Image.Resampling.BILINEAR)
    mode = "L" if upload.mode in _GREY_MODES else "RGB"
    return img if img.mode == mode else img.convert(mode)


@register_task
class DenoiseTask(Task):
    name = "denoise"
    route = "/denoise"
    title = "Denoise"
    summary = "The image as the autoencoder reconstructs it (noise removed): a PNG of the upload's size and mode."
    serves = ("autoencoder",)
    default_model = "cae"
    record_key = "denoised"

    def answer_bytes_per_pixel(self, options: TaskOptions) -> int:
        # the reconstruction at the upload's size (4), its other mode (4), the PNG and its copy
        return 8

    def answer(self, model, contract, outputs: Outputs, upload, pixels, options: TaskOptions) -> ImageAnswer:
        return ImageAnswer(png=png_bytes(denoised_image(outputs["reconstruction"], upload)))
