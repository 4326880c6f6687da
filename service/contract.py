"""The typed contract of an exported file: what a cnnserve ONNX file promises, on both sides of the file.

``cnnserve export`` builds a :class:`ModelContract` and writes it into the file's ``metadata_props``
(:meth:`ModelContract.to_metadata`); the service, the batch scorer and ``cnnserve export-repo`` parse it once when
they open the file (:meth:`ModelContract.from_metadata`) and read typed fields from then on — never a dict.

The metadata keys stay those of the contract in the README (``cnnserve.spec`` with the model's spec as JSON,
``cnnserve.parity``, ``cnnserve.precision``, ``cnnserve.quality``, ``cnnserve.threshold``, and since the embedding
and generation tasks ``cnnserve.evaluation`` and ``cnnserve.gallery``), so files exported before this module existed
load unchanged, and any other runtime can read them with ``json.loads``. Torch-free: export imports this module, the
service never imports export.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from functools import cached_property
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ServeError
from .imaging import Preprocess

__all__ = [
    "ContractError",
    "Evaluation",
    "Gallery",
    "ModelContract",
    "Quality",
    "TensorInfo",
    "SPEC_KEY",
    "MODEL_TASKS",
]

SPEC_KEY = "cnnserve.spec"
# What an exported network computes (the file's ``task``); the service's tasks (service.tasks) answer requests for
# one or more of these.
MODEL_TASKS = (
    "classification",
    "detection",
    "semantic_segmentation",
    "instance_segmentation",
    "autoencoder",
    "inpainting",
    "generation",
)


class ContractError(ServeError):
    """A file whose metadata is missing or does not parse: it was not exported by ``cnnserve export``."""

    status = 503


class TensorInfo(BaseModel):
    """One graph input or output as onnxruntime reports it (``type`` like ``tensor(float)``; a dynamic axis is a
    string or None)."""

    model_config = ConfigDict(frozen=True)

    name: str
    type: str
    shape: tuple[int | str | None, ...]

    @property
    def dims(self) -> tuple[int, ...]:
        """The shape with -1 for every dynamic axis."""
        return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in self.shape)


class Quality(BaseModel):
    """A precision variant's measured quality against its fp32 file (``export.quality``); higher is better."""

    model_config = ConfigDict(frozen=True, extra="allow")

    metric: str
    fp32: float
    variant: float
    drop: float
    data: str


class Evaluation(BaseModel):
    """A figure the file itself reaches on held-out data, measured through onnxruntime when it was exported (the
    CAE's k-NN accuracy on its embeddings, the inpainter's PSNR gain in the hole); ``goal`` is the figure it must
    reach, where there is one."""

    model_config = ConfigDict(frozen=True)

    metric: str
    value: float
    data: str
    goal: float | None = None


def _b64_array(text: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)


class Gallery(BaseModel):
    """A reference set the file carries for ``/embed``: the embeddings of a demo's held-out images (the digits test
    split), their labels and small thumbnails, and their places on a 2-D map, so the service answers nearest
    neighbours and draws the map without the data set. Arrays are little-endian base64 (embeddings float16, the
    map float32, thumbnails uint8), so the metadata stays small."""

    model_config = ConfigDict(frozen=True)

    data: str = Field(description="what the images are, e.g. 'digits test split (450)'")
    count: int
    dim: int
    labels: tuple[str, ...]
    embeddings: str  # base64 float16 [count, dim], L2-normalised rows
    map_method: str = Field(description="how the embeddings were reduced to 2-D, and how an upload is placed")
    map: str  # base64 float32 [count, 2]
    thumbnail_size: tuple[int, int] | None = None  # (H, W)
    thumbnails: str | None = None  # base64 uint8 [count, H, W], grey

    @cached_property
    def vectors(self) -> np.ndarray:
        return _b64_array(self.embeddings, "float16", (self.count, self.dim)).astype(np.float32)

    @cached_property
    def points(self) -> np.ndarray:
        return _b64_array(self.map, "float32", (self.count, 2)).astype(np.float32)

    @cached_property
    def images(self) -> np.ndarray | None:
        if self.thumbnails is None or self.thumbnail_size is None:
            return None
        return _b64_array(self.thumbnails, "uint8", (self.count, *self.thumbnail_size))

    @staticmethod
    def encode(array: np.ndarray, dtype: str) -> str:
        """An array → the little-endian base64 text the fields above hold."""
        return base64.b64encode(np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()).decode()


class ModelContract(BaseModel):
    """Everything a served file promises: its task, its input (size, channels, resize recipe, pixel type), its
    labels and scalar inputs, where its weights came from, and how close it is to PyTorch and to its fp32 file."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    task: str = Field(description=f"what the network computes: {', '.join(MODEL_TASKS)}")
    family: str = ""
    description: str = ""

    # --- the input: pixels in, as the graph takes them -------------------------------------------------------------
    input_size: tuple[int, int] = Field(description="(H, W) of the graph's input (for any-size models: the example)")
    in_channels: int = 3
    mean: tuple[float, ...] = ()  # applied inside the graph; recorded for other runtimes
    std: tuple[float, ...] = ()
    resize_size: int | None = None
    max_size: int | None = None
    interpolation: Literal["nearest", "bilinear", "bicubic"] = "bilinear"
    input_dtype: Literal["float32", "uint8"] = "float32"
    dynamic_hw: bool = False
    size_multiple: int = 1
    background: tuple[int, int, int] = Field(
        (255, 255, 255),
        description="RGB that transparent pixels are composited on: the background of the model's data (white "
        "for photos; black for the digits demos, light ink on black). Files exported without it: white",
    )

    # --- the output ----------------------------------------------------------------------------------------------
    num_classes: int = 0
    labels: tuple[str, ...] | None = None
    extra_inputs: dict[str, float] = Field(
        default_factory=dict, description="scalar graph inputs (detection thresholds) with their defaults"
    )
    threshold: float | None = Field(None, description="autoencoders: the calibrated anomaly threshold")
    inputs: tuple[str, ...] = Field(
        (), description="the graph's per-row inputs as exported (images; + mask for inpainting; latent for generators)"
    )
    outputs: tuple[str, ...] = Field(
        (), description="the graph's outputs as exported (empty for files exported before they were listed)"
    )
    noise_dim: int | None = Field(
        None, description="generators: numbers of N(0, I) noise per image (the graph's `noise`)"
    )
    gallery: Gallery | None = Field(None, description="embedding models: the reference set for neighbours and map")

    # --- provenance and measured quality -------------------------------------------------------------------------
    weights: str = "unknown"
    precision: str = "fp32"
    parity: float | None = Field(None, description="max |ONNX − PyTorch| measured at export")
    quality: Quality | None = None
    evaluation: tuple[Evaluation, ...] = Field((), description="held-out figures measured on this file at export")
    torchvision: str | None = None
    torchvision_weights: str | None = None

    @cached_property
    def preprocess(self) -> Preprocess:
        """The shared pre-processing's view of this input (built once per contract, not per request)."""
        return Preprocess(
            input_size=self.input_size,
            in_channels=self.in_channels,
            resize_size=self.resize_size,
            max_size=self.max_size,
            interpolation=self.interpolation,
            background=self.background,
        )

    def label(self, index: int) -> str:
        """The class name of an output index (the index itself for models without labels)."""
        if self.labels is not None and 0 <= index < len(self.labels):
            return self.labels[index]
        return str(index)

    @property
    def classes(self) -> int:
        return self.num_classes or len(self.labels or ())

    # --- the file's metadata ---------------------------------------------------------------------------------------

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> ModelContract:
        """Parse a file's ``metadata_props``; :class:`ContractError` says what is missing or wrong."""
        raw = metadata.get(SPEC_KEY)
        if raw is None:
            raise ContractError(f"the ONNX file has no {SPEC_KEY} metadata; export it with `cnnserve export`")
        try:
            spec = json.loads(raw)
            fields: dict[str, Any] = dict(spec) if isinstance(spec, dict) else {}
            if not fields:
                raise ValueError(f"{SPEC_KEY} is not a JSON object")
            for key in ("parity", "precision", "threshold"):
                if f"cnnserve.{key}" in metadata:
                    fields[key] = metadata[f"cnnserve.{key}"]
            for key in ("quality", "evaluation", "gallery"):
                if metadata.get(f"cnnserve.{key}"):
                    fields[key] = json.loads(metadata[f"cnnserve.{key}"])
            return cls.model_validate(fields)
        except (ValueError, ValidationError) as exc:
            raise ContractError(f"the file's cnnserve metadata does not parse: {exc}") from None

    def to_metadata(self) -> dict[str, str]:
        """The ``metadata_props`` that carry this contract (the inverse of :meth:`from_metadata`)."""
        spec = self.model_dump(mode="json", exclude={"parity", "quality", "threshold", "evaluation", "gallery"})
        props = {SPEC_KEY: json.dumps(spec), "cnnserve.precision": self.precision}
        if self.parity is not None:
            props["cnnserve.parity"] = f"{self.parity:.6g}"
        if self.quality is not None:
            props["cnnserve.quality"] = json.dumps(self.quality.model_dump(mode="json"))
        if self.evaluation:
            props["cnnserve.evaluation"] = json.dumps([e.model_dump(mode="json") for e in self.evaluation])
        if self.gallery is not None:
            props["cnnserve.gallery"] = json.dumps(self.gallery.model_dump(mode="json"))
        if self.threshold is not None:
            props["cnnserve.threshold"] = repr(float(self.threshold))
        return props
