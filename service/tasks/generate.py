"""``/generate``: new images from a generative model (the digits VAE) — ``count`` rows of standard normal noise
drawn with ``seed``, turned into images by the graph, answered as base64 PNGs and one grid PNG of them all.

The request carries no image. The noise is drawn here, with numpy's PCG64 generator seeded by ``seed``, so the same
seed gives the same noise and hence the same images (the model being the same file); without a seed the service
picks one and answers it, so any answer can be reproduced. The graph's input is the noise (``noise [N, D]``; the
VAE's graph turns it into latent codes with its prior and decodes them), its output the images (``images [N, C, H,
W]`` in [0, 1]); the batcher treats the noise like any other rows.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

from ..codecs import png_base64
from ..contract import ModelContract
from ..errors import BadInput
from . import register_task
from .base import DecodeLimits, Inputs, Outputs, Task, TaskOptions

__all__ = ["GenerateTask", "GenerateOptions", "GenerateResponse", "noise_for", "image_grid", "MAX_SEED"]

MAX_SEED = 2**32 - 1
GRID_GAP = 2  # pixels between the grid's tiles


def noise_for(seed: int, count: int, dim: int) -> np.ndarray:
    """``count`` rows of ``dim`` numbers from N(0, I), float32, the same for the same seed (the demo's training
    record measures its samples with this very function)."""
    return np.random.default_rng(seed).standard_normal((count, dim), dtype=np.float32)


def _to_image(sample: np.ndarray) -> Image.Image:
    """[C, H, W] in [0, 1] → a grey (1 channel) or RGB image."""
    arr = np.clip(np.rint(np.asarray(sample, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))


def image_grid(images: list[Image.Image], columns: int | None = None) -> Image.Image:
    """Tiles in rows of ``columns`` (default: a near-square grid), ``GRID_GAP`` grey pixels between them."""
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    w, h = images[0].size
    grid = Image.new(images[0].mode, (columns * w + (columns - 1) * GRID_GAP, rows * h + (rows - 1) * GRID_GAP), 96)
    for i, img in enumerate(images):
        grid.paste(img, ((i % columns) * (w + GRID_GAP), (i // columns) * (h + GRID_GAP)))
    return grid


class GenerateOptions(TaskOptions):
    count: int = Field(16, ge=1, le=64, description="images to generate")
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="random seed of the noise; the same seed gives the same images"
    )


class GenerateResponse(BaseModel):
    model: str
    seed: int = Field(description="the seed the codes were drawn with (the one sent, or the one picked)")
    grid: str = Field(description="base64 PNG: every image in a near-square grid, in order")
    images: list[str] = Field(description="base64 PNGs, one per image, at the model's output size")

    model_config = {
        "json_schema_extra": {"example": {"model": "cvae", "seed": 7, "grid": "iVBORw0KGgo…", "images": ["iVBO…"]}}
    }


@register_task
class GenerateTask(Task):
    name = "generate"
    route = "/generate"
    title = "Generate"
    summary = "New images from a generative model: `count` rows of noise drawn with `seed`, made images by the graph."
    description = "No image to send: the fields alone (a form, JSON or query parameters), e.g. `count=16&seed=7`."
    serves = ("generation",)
    default_model = "cvae"
    files = ()
    Options = GenerateOptions
    Response = GenerateResponse
    png_fields = ("grid",)

    def parse_options(self, fields: Mapping[str, Any]) -> GenerateOptions:
        options = super().parse_options(fields)
        if options.seed is None:  # pick one, and say which: every answer can be asked for again
            options = options.model_copy(update={"seed": secrets.randbelow(MAX_SEED + 1)})
        return options  # type: ignore[return-value]

    def check(self, contract: ModelContract, options: GenerateOptions) -> None:
        if not contract.noise_dim:
            raise BadInput(f"model {contract.name!r} does not record the size of its noise input; re-export it")

    def decode(self, contract, files, limits: DecodeLimits) -> dict[str, Image.Image]:
        return {}

    def prepare(self, contract: ModelContract, uploads, options: GenerateOptions) -> Inputs:
        noise = noise_for(int(options.seed), options.count, int(contract.noise_dim))
        return Inputs(images=noise, context=options.seed)

    def respond(self, model, contract, outputs: Outputs, inputs: Inputs, options: GenerateOptions) -> GenerateResponse:
        images = [_to_image(sample) for sample in outputs["images"]]
        return GenerateResponse(
            model=model,
            seed=int(inputs.context),
            grid=png_base64(image_grid(images)),
            images=[png_base64(img) for img in images],
        )
