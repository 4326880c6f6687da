"""``/embed``: one image as a vector — a classifier's penultimate features or an autoencoder's latent code.

The graph computes it (the ``embedding`` output, L2-normalised inside the graph, float32), so a ``/v2`` client or any
other runtime gets the same vector; this task only lists it. An inpainting model's code is an embedding too (learning
to fill holes is learning features): it gets the image with an empty mask, and, being trained on all ten digits, it
is the default here (``default_model``; ``serves`` lists ``inpainting`` first). Files that carry a reference gallery
(the digits demos: the embeddings of the digits test split, their labels, thumbnails and a 2-D map of them) can also
answer the image's nearest neighbours in that gallery and its place on the map — what the page's Embed view draws.

Files exported before ``/embed`` existed have no ``embedding`` output; they still serve their other endpoints, and
this one refuses them with the export command that adds it.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field

from ..codecs import png_base64
from ..contract import Gallery, ModelContract
from ..errors import BadInput
from . import register_task
from .base import Inputs, Outputs, Task, TaskOptions

__all__ = ["EmbedTask", "EmbedOptions", "EmbedResponse", "Neighbor", "EmbeddingMap", "nearest", "place_on_map"]

MAP_NEIGHBOURS = 5  # an image is placed on the map at the weighted mean of its nearest gallery items' places


class EmbedOptions(TaskOptions):
    neighbors: int = Field(
        0, ge=0, le=50, description="list this many nearest images of the model's reference gallery (digits demos)"
    )
    map: bool = Field(False, description="add the gallery's 2-D map and the image's place on it (digits demos)")


class Neighbor(BaseModel):
    index: int = Field(description="row of the gallery (the digits test split, in its order)")
    label: str
    distance: float = Field(description="Euclidean distance between the unit vectors (cosine similarity = 1 − d²/2)")
    image: str | None = Field(None, description="base64 PNG of the gallery image")


class MapPoint(BaseModel):
    x: float
    y: float
    label: str


class EmbeddingMap(BaseModel):
    method: str = Field(description="how the gallery was reduced to 2-D and how the image is placed")
    x: float = Field(description="the image's place")
    y: float
    points: list[MapPoint] = Field(description="every gallery image's place, with its label")


class EmbedResponse(BaseModel):
    model: str
    dim: int
    embedding: list[float] = Field(description="L2-normalised, float32 values")
    gallery: str | None = Field(None, description="what the neighbours and the map are drawn from")
    neighbors: list[Neighbor] | None = None
    map: EmbeddingMap | None = None

    model_config = {
        "json_schema_extra": {"example": {"model": "cae", "dim": 8, "embedding": [0.12, -0.53, 0.31, 0.08]}}
    }


def nearest(gallery: Gallery, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` gallery rows nearest ``vector`` (Euclidean on the unit sphere), nearest first, and the distances."""
    distances = np.linalg.norm(gallery.vectors - vector[None, :], axis=1)
    k = min(k, len(distances))
    order = np.argpartition(distances, k - 1)[:k]
    order = order[np.argsort(distances[order], kind="stable")]
    return order, distances[order]


def place_on_map(gallery: Gallery, vector: np.ndarray) -> tuple[float, float]:
    """A 2-D map of the gallery cannot place a new point by itself (t-SNE has no out-of-sample projection): the
    image goes to the inverse-distance weighted mean of its nearest gallery items' places."""
    rows, distances = nearest(gallery, vector, MAP_NEIGHBOURS)
    weights = 1.0 / np.maximum(distances, 1e-6)
    x, y = (gallery.points[rows] * weights[:, None]).sum(axis=0) / weights.sum()
    return float(x), float(y)


def _reexport_command(contract: ModelContract) -> str:
    weights = contract.weights.partition(":")[0]
    source = {"demo": "demo", "torchvision": "torchvision", "random": "random"}.get(weights, "PATH")
    command = f"cnnserve export {contract.name} --weights {source}"
    if contract.precision != "fp32":
        command += f" --precision {contract.precision}"
    if contract.input_dtype != "float32":
        command += f" --input-dtype {contract.input_dtype}"
    return command


@register_task
class EmbedTask(Task):
    name = "embed"
    route = "/embed"
    title = "Embed"
    summary = "The image as a vector (L2-normalised): a classifier's penultimate features, an autoencoder's code."
    description = (
        "The digits demo models carry a gallery (the digits test split): `neighbors=k` lists the image's k nearest "
        "gallery images with their distances, `map=true` adds the gallery's 2-D map and the image's place on it."
    )
    # With no model named, /embed answers with the default set's digits inpainting CAE (trained on all ten digits)
    # when it is served, else the first served model of these, in this order.
    serves = ("inpainting", "autoencoder", "classification")
    default_model = "cae_inpaint"
    Options = EmbedOptions
    Response = EmbedResponse
    draft_decode = True
    scored_by_default = False  # `cnnserve score --task embed`: vectors are long, and asked for
    vector_fields = ("embedding",)
    png_fields = ("image",)

    def check(self, contract: ModelContract, options: EmbedOptions) -> None:
        if "embedding" not in contract.outputs:
            raise BadInput(
                f"model {contract.name!r} was exported without an `embedding` output (before /embed existed); "
                f"re-export it with `{_reexport_command(contract)}` and restart the service"
            )
        if (options.neighbors or options.map) and contract.gallery is None:
            raise BadInput(
                f"model {contract.name!r} carries no reference gallery, so no neighbours or map; the digits demo "
                "models do (cae_inpaint, cae, lenet5). Ask without `neighbors` and `map` for the embedding alone"
            )

    def prepare(self, contract: ModelContract, uploads, options: TaskOptions) -> Inputs:
        inputs = super().prepare(contract, uploads, options)
        if "mask" in contract.inputs:  # an inpainting model: the whole image, nothing to fill
            inputs.rows["mask"] = np.zeros((1, 1, *contract.input_size), dtype=np.float32)
        return inputs

    def answer(self, model, contract, outputs: Outputs, upload, pixels, options: EmbedOptions) -> EmbedResponse:
        vector = np.asarray(outputs["embedding"], dtype=np.float32).reshape(-1)
        # float32's shortest decimal forms: exact, and half the JSON of float64's 17 digits
        values = [float(v) for v in vector.astype(str)]
        response = EmbedResponse(model=model, dim=len(values), embedding=values)
        gallery = contract.gallery
        if gallery is None or not (options.neighbors or options.map):
            return response
        response.gallery = gallery.data
        if options.neighbors:
            rows, distances = nearest(gallery, vector, options.neighbors)
            thumbnails = gallery.images
            response.neighbors = [
                Neighbor(
                    index=int(row),
                    label=gallery.labels[row],
                    distance=round(float(d), 6),
                    image=png_base64(thumbnails[row]) if thumbnails is not None else None,
                )
                for row, d in zip(rows, distances, strict=True)
            ]
        if options.map:
            x, y = place_on_map(gallery, vector)
            response.map = EmbeddingMap(
                method=gallery.map_method,
                x=round(x, 4),
                y=round(y, 4),
                points=[
                    MapPoint(x=round(float(px), 4), y=round(float(py), 4), label=label)
                    for (px, py), label in zip(gallery.points, gallery.labels, strict=True)
                ],
            )
        return response
