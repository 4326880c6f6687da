"""What a task is: one kind of answer the service gives, as one class.

A :class:`Task` holds everything about one endpoint that is not transport: the model tasks it serves, its request
options (a typed pydantic model, so forms, JSON, ``/docs`` and the page agree), the checks it makes before any
pixel is decoded, the scalar graph inputs it sets, how one image's graph outputs become its answer, and the
answer's response model. The HTTP routes, the batch scorer, the page's model list and the export's quality checks
iterate the registry (:mod:`service.tasks`); none of them knows a task by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from annotated_types import Ge, Le
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..contract import ModelContract
from ..errors import BadInput

__all__ = ["Task", "TaskOptions", "ImageAnswer", "Outputs"]

Outputs = Mapping[str, np.ndarray]  # one image's slice of every graph output, by name


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
    Options: ClassVar[type[TaskOptions]] = TaskOptions
    Response: ClassVar[type[BaseModel] | None] = None  # None: the answer is an image (ImageAnswer)
    # JPEGs may be decoded at reduced size: the answer does not depend on the upload's pixel geometry.
    draft_decode: ClassVar[bool] = False
    # Answer fields holding base64 PNGs (nested lists of objects included): the batch scorer writes them as files.
    png_fields: ClassVar[tuple[str, ...]] = ()
    # Image answers: the field under which the batch scorer records the written file.
    record_key: ClassVar[str] = ""

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
            return f"`{field}` must be between {low:g} and {high:g}, got {got!r}"
        if error["type"] == "greater_than_equal":
            return f"`{field}` must be at least {low:g}, got {got!r}"
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
