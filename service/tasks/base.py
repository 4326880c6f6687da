"""What a task is: one kind of answer the service gives, as one class.

A :class:`Task` holds everything about one endpoint that is not transport: the model tasks it serves, the files it
takes (one ``image`` for most; an image and a ``mask`` for inpainting; none for generation), its request options (a
typed pydantic model, so forms, JSON, ``/docs`` and the page agree), the checks it makes before any pixel is decoded,
how the files become the graph's inputs, the scalar graph inputs it sets, how the graph outputs become its answer,
and the answer's response model. The HTTP routes, the batch scorer, the page's model list and the export's quality
checks iterate the registry (:mod:`service.tasks`); none of them knows a task by name.

One request goes through the hooks in this order (``service.app.http`` and ``cnnserve.scorer`` call them):
:meth:`Task.parse_options` → :meth:`Task.check` → :meth:`Task.decode` → :meth:`Task.prepare` → the model →
:meth:`Task.respond` (by default one image's :meth:`Task.answer`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from annotated_types import Ge, Le
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..contract import ModelContract
from ..errors import BadInput
from ..imaging import decode_image, preprocess_uint8

__all__ = ["DecodeLimits", "FileField", "ImageAnswer", "Inputs", "Outputs", "Task", "TaskOptions"]

Outputs = Mapping[str, np.ndarray]  # one image's slice of every graph output, by name


@dataclass(frozen=True)
class FileField:
    """A file a task's request carries (multipart file part, base64 string in JSON, or the raw body for the first)."""

    name: str
    required: bool = True
    description: str = "the image file"


@dataclass(frozen=True)
class DecodeLimits:
    """What decoding may cost (the service's settings): pixels per image, and how far a JPEG may be draft-decoded."""

    max_pixels: int = 50_000_000
    draft_ratio: float = 1.0


@dataclass(frozen=True)
class Inputs:
    """What one request feeds the model, and what its answer needs besides the outputs.

    ``images`` are the rows of the graph's first input (one image's uint8 pixels ``[1, C, H, W]``; a generator's
    latent codes ``[n, Z]``), ``rows`` any further per-row graph inputs by name (an inpainting ``mask``)."""

    images: np.ndarray
    rows: dict[str, np.ndarray] = field(default_factory=dict)
    upload: Image.Image | None = None  # the decoded upload: answers are drawn in its pixels
    pixels: np.ndarray | None = None  # the upload's model input, uint8 [C, H, W]
    context: Any = None  # whatever else the task's answer needs (the inpainting mask at the upload's size, a seed)


class TaskOptions(BaseModel):
    """The request options every task takes; a task's own options subclass this."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    model: str | None = Field(
        None, description="served model name; default: the endpoint's default model (GET /models: endpoints)"
    )


class ImageAnswer(BaseModel):
    """An answer that is an image (``image/png``), not JSON."""

    png: bytes
    media_type: str = "image/png"


_MESSAGES = {
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "int_type": "must be an integer",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
}


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


class Task:
    """One kind of answer. Subclasses set the class attributes and override :meth:`answer` (and, where they need
    to, :meth:`check` and :meth:`graph_inputs`); :func:`service.tasks.register_task` adds them to the registry."""

    name: ClassVar[str]  # "classify"
    route: ClassVar[str]  # "/classify"
    title: ClassVar[str]  # what the page calls it
    summary: ClassVar[str]  # one line for /docs
    description: ClassVar[str] = ""  # more for /docs, when the options need it
    serves: ClassVar[tuple[str, ...]]  # the model tasks it answers for, in the order a default model is picked
    # The default set's model for this endpoint (what `make serve` exports): it answers a request that names no
    # model whenever it is served, however many other models are (service.catalog.Catalog.default_model).
    default_model: ClassVar[str | None] = None
    # The files a request carries, the first being what a raw (non-form, non-JSON) body is.
    files: ClassVar[tuple[FileField, ...]] = (FileField("image"),)
    Options: ClassVar[type[TaskOptions]] = TaskOptions
    Response: ClassVar[type[BaseModel] | None] = None  # None: the answer is an image (ImageAnswer)
    # JPEGs may be decoded at reduced size: the answer does not depend on the upload's pixel geometry.
    draft_decode: ClassVar[bool] = False
    # Answer fields holding base64 PNGs (nested lists of objects included): the batch scorer writes them as files.
    png_fields: ClassVar[tuple[str, ...]] = ()
    # Image answers: the field under which the batch scorer records the written file.
    record_key: ClassVar[str] = ""
    # Whether `cnnserve score` answers it when no --task is named (embeddings are asked for: they are long).
    scored_by_default: ClassVar[bool] = True
    # Answer fields holding one fixed-length vector of floats per image, named as the graph output they come from:
    # a Parquet sink writes each as a fixed-size list column (what vector stores load).
    vector_fields: ClassVar[tuple[str, ...]] = ()

    # --- request options -----------------------------------------------------------------------------------------

    def parse_options(self, fields: Mapping[str, Any]) -> TaskOptions:
        """Form fields (strings), query parameters or JSON values → the typed options, or a 400 naming the field.

        An empty form value means "not given", except for a flag, where a bare ``?overlay`` means yes."""
        cleaned: dict[str, Any] = {}
        for key, value in fields.items():
            info = self.Options.model_fields.get(key)
            if info is None:
                continue
            if isinstance(value, str) and value.strip() == "":
                if info.annotation in (bool, "bool"):
                    cleaned[key] = True
                continue
            cleaned[key] = value.strip() if isinstance(value, str) else value
        try:
            return self.Options.model_validate(cleaned)
        except ValidationError as exc:
            raise BadInput(self._explain(exc, cleaned)) from None

    def _explain(self, exc: ValidationError, values: Mapping[str, Any]) -> str:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "?"
        got = values.get(field)
        info = self.Options.model_fields.get(field)
        low = next((m.ge for m in (info.metadata if info else ()) if isinstance(m, Ge)), None)
        high = next((m.le for m in (info.metadata if info else ()) if isinstance(m, Le)), None)
        if error["type"] in ("greater_than_equal", "less_than_equal") and low is not None and high is not None:
            return f"`{field}` must be between {_number(low)} and {_number(high)}, got {got!r}"
        if error["type"] == "greater_than_equal":
            return f"`{field}` must be at least {_number(low)}, got {got!r}"
        message = _MESSAGES.get(error["type"], error["msg"].lower())
        return f"`{field}` {message}, got {got!r}"

    # --- the answer ----------------------------------------------------------------------------------------------

    def check(self, contract: ModelContract, options: TaskOptions) -> None:
        """Refuse options this model cannot honour, before any decoding work (a 400 with what it accepts)."""

    def answer_bytes_per_pixel(self, options: TaskOptions) -> int:
        """The most memory :meth:`answer` and its encoded response hold at once, per pixel of the upload, beyond the
        upload itself: 0 for answers that do not grow with it (a class, boxes). The service reserves it in its
        memory budget before decoding, and runs answers that draw or encode pictures off the event loop."""
        return 0

    def decode(
        self, contract: ModelContract, files: Mapping[str, bytes], limits: DecodeLimits
    ) -> dict[str, Image.Image]:
        """The request's files → decoded images, by field name (a :class:`BadInput` for any that cannot be read).
        A JPEG ``image`` may be decoded at reduced size when the task says its answer does not depend on the
        upload's pixel geometry (:attr:`draft_decode`)."""
        draft = contract.preprocess if self.draft_decode else None
        return {
            name: decode_image(
                data,
                max_pixels=limits.max_pixels,
                draft_for=draft if name == "image" else None,
                draft_ratio=limits.draft_ratio,
            )
            for name, data in files.items()
        }

    def prepare(self, contract: ModelContract, uploads: Mapping[str, Image.Image], options: TaskOptions) -> Inputs:
        """The decoded files → the model's inputs for this request: by default the ``image``'s pixels as the model
        takes them (the shared pre-processing, :func:`service.imaging.preprocess_uint8`)."""
        upload = uploads["image"]
        pixels = preprocess_uint8(upload, contract.preprocess)
        return Inputs(images=pixels[None], upload=upload, pixels=pixels)

    def graph_inputs(self, contract: ModelContract, options: TaskOptions) -> dict[str, float]:
        """The scalar graph inputs for this request (detection thresholds), defaulting to the file's own."""
        return {}

    def agreement(
        self, reference: Mapping[str, np.ndarray], variant: Mapping[str, np.ndarray]
    ) -> tuple[str, float, dict[str, float]] | None:
        """How well a precision variant's outputs agree with its fp32 file's, in this task's terms, on the same
        images: (metric, value with 1.0 = identical, details); None to leave it to the generic output cosine.
        ``export.quality`` asks the tasks serving a model when the model has no demo metric of its own."""
        return None

    def answer(
        self, model: str, contract: ModelContract, outputs: Outputs, upload: Image.Image, pixels: np.ndarray,
        options: TaskOptions,
    ) -> BaseModel | ImageAnswer:  # fmt: skip
        """One image's graph outputs → the answer. ``upload`` is the decoded upload (answers in its pixels),
        ``pixels`` the model's uint8 input ``[C, H, W]`` for it."""
        raise NotImplementedError

    def respond(
        self, model: str, contract: ModelContract, outputs: Outputs, inputs: Inputs, options: TaskOptions
    ) -> BaseModel | ImageAnswer:
        """This request's rows of every graph output (batch axis first) → the answer: by default the one image's
        :meth:`answer`. Tasks whose request is not one image (generation: ``count`` images) override this."""
        return self.answer(
            model, contract, {k: v[0] for k, v in outputs.items()}, inputs.upload, inputs.pixels, options
        )
