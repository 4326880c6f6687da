"""The typed contract of an exported file: what a cnnserve ONNX file promises, on both sides of the file.

``cnnserve export`` builds a :class:`ModelContract` and writes it into the file's ``metadata_props``
(:meth:`ModelContract.to_metadata`); the service, the batch scorer and ``cnnserve export-repo`` parse it once when
they open the file (:meth:`ModelContract.from_metadata`) and read typed fields from then on — never a dict.

The metadata keys stay those of the contract in the README (``cnnserve.spec`` with the model's spec as JSON,
``cnnserve.parity``, ``cnnserve.precision``, ``cnnserve.quality``, ``cnnserve.threshold``), so files exported before
this module existed load unchanged, and any other runtime can read them with ``json.loads``. Torch-free: export
imports this module, the service never imports export.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ServeError
from .imaging import Preprocess

__all__ = ["ContractError", "ModelContract", "Quality", "TensorInfo", "SPEC_KEY", "MODEL_TASKS"]

SPEC_KEY = "cnnserve.spec"
# What an exported network computes (the file's ``task``); the service's tasks (service.tasks) answer requests for
# one or more of these.
MODEL_TASKS = ("classification", "detection", "semantic_segmentation", "instance_segmentation", "autoencoder")


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

    # --- provenance and measured quality -------------------------------------------------------------------------
    weights: str = "unknown"
    precision: str = "fp32"
    parity: float | None = Field(None, description="max |ONNX − PyTorch| measured at export")
    quality: Quality | None = None
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
            if metadata.get("cnnserve.quality"):
                fields["quality"] = json.loads(metadata["cnnserve.quality"])
            return cls.model_validate(fields)
        except (ValueError, ValidationError) as exc:
            raise ContractError(f"the file's cnnserve metadata does not parse: {exc}") from None

    def to_metadata(self) -> dict[str, str]:
        """The ``metadata_props`` that carry this contract (the inverse of :meth:`from_metadata`)."""
        spec = self.model_dump(mode="json", exclude={"parity", "quality", "threshold"})
        props = {SPEC_KEY: json.dumps(spec), "cnnserve.precision": self.precision}
        if self.parity is not None:
            props["cnnserve.parity"] = f"{self.parity:.6g}"
        if self.quality is not None:
            props["cnnserve.quality"] = json.dumps(self.quality.model_dump(mode="json"))
        if self.threshold is not None:
            props["cnnserve.threshold"] = repr(float(self.threshold))
        return props
