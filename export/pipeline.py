"""``cnnserve export``: build → load weights → wrap → export ONNX → parity → metadata → model store.

One function, :func:`export_model`, so the CLI, ``make serve`` (the default set) and the tests export the same
way.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import models
from models import ModelSpec

from .onnx import INPUT_NAME, export_onnx, write_metadata
from .parity import PARITY_TOLERANCE, measure_parity, parity_batch
from .store import save_to_store
from .weights import (
    apply_state_dict,
    load_demo,
    load_state_dict_file,
    load_torchvision_state_dict,
    torchvision_spec,
)
from .wrappers import export_for

__all__ = ["DEFAULT_EXPORTS", "PRECISIONS", "ExportError", "ExportResult", "export_model", "store_tag"]

logger = logging.getLogger("cnnserve.export")

# What `make serve` exports when the store lacks it: (model name, weights). Demo weights ship in the repository.
DEFAULT_EXPORTS: tuple[tuple[str, str], ...] = (
    ("lenet5", "demo"),
    ("yolov1_shapes", "demo"),
    ("cae", "demo"),
    ("unet", "demo"),
)
PRECISIONS = ("fp32",)


class ExportError(RuntimeError):
    """An export that must not produce a file: parity above tolerance, unknown precision, bad weights."""


@dataclass(frozen=True)
class ExportResult:
    name: str
    tag: str | None  # store tag, None when not saved to the store
    path: Path | None  # the ONNX file written with --output, None when only the store got it
    parity: float
    source: str
    seconds: float


def store_tag(name: str, precision: str) -> str:
    return name if precision == "fp32" else f"{name}-{precision}"


def _load_weights(model: torch.nn.Module, spec: ModelSpec, weights: str) -> tuple[ModelSpec, str, dict[str, str]]:
    """Load ``weights`` into ``model``; returns the spec to record (torchvision weights bring their transforms),
    the source string, and extra metadata the weights carry (a demo's calibrated anomaly threshold)."""
    if weights == "random":
        return spec, "random", {}
    if weights == "torchvision":
        state = load_torchvision_state_dict(spec)
        apply_state_dict(model, spec, state)
        return torchvision_spec(spec), f"torchvision:{spec.torchvision_weights}", {}
    if weights == "demo":
        state, record = load_demo(spec)
        apply_state_dict(model, spec, state)
        extra = {f"cnnserve.{k}": str(v) for k, v in record.get("onnx_metadata", {}).items()}
        return spec, f"demo:{record.get('dataset', 'unknown')}", extra
    state, source = load_state_dict_file(Path(weights))
    apply_state_dict(model, spec, state)
    return spec, source, {}


def export_model(
    name: str,
    *,
    weights: str = "random",
    precision: str = "fp32",
    tag: str | None = None,
    output: Path | None = None,
    num_classes: int | None = None,
    save: bool = True,
    seed: int = 0,
) -> ExportResult:
    """Export one registered model; raises :class:`ExportError`/:class:`WeightsError` with an actionable message."""
    start = time.perf_counter()
    if precision not in PRECISIONS:
        raise ExportError(f"precision {precision!r} is not available yet; this version exports {', '.join(PRECISIONS)}")
    spec = models.get_spec(name)
    overrides: dict[str, object] = {}
    if weights == "torchvision":
        overrides.update(spec.torchvision_kwargs)
    if num_classes is not None and num_classes != spec.num_classes:
        if weights in ("torchvision", "demo"):
            raise ExportError(f"--num-classes cannot change the head of {weights} weights")
        overrides["num_classes"] = num_classes
        spec = spec.with_overrides(num_classes=num_classes)
    if "image_size" in overrides:
        size = int(overrides["image_size"])  # type: ignore[arg-type]
        spec = dataclasses.replace(spec, input_size=(size, size))

    torch.manual_seed(seed)  # "random" weights are reproducible
    model = models.build_model(name, **overrides).eval()
    spec, source, extra_metadata = _load_weights(model, spec, weights)
    task = export_for(spec)
    wrapped = task.wrapper(model, spec).eval()

    images = parity_batch(spec.in_channels, spec.input_size, batch=2, seed=seed)
    extra = tuple(torch.tensor(value, dtype=torch.float32) for value in task.extra_inputs.values())
    tolerance = task.parity_tolerance if task.parity_tolerance is not None else PARITY_TOLERANCE
    with tempfile.TemporaryDirectory(prefix="cnnserve-export-") as tmp:
        path = output if output is not None else Path(tmp) / "model.onnx"
        export_onnx(
            wrapped,
            (images, *extra),
            path,
            input_names=(INPUT_NAME, *task.extra_inputs),
            output_names=task.outputs,
            dynamic_hw=task.dynamic_hw,
            custom_translation_table=task.onnx_translations,
        )
        parity = measure_parity(wrapped, path, (images, *extra), task.parity_metric)
        if not parity <= tolerance:
            raise ExportError(
                f"{name}: ONNX output differs from PyTorch by {parity:.3g} (> {tolerance}); file not saved"
            )
        spec_json = {
            **spec.to_json_dict(),
            "weights": source,
            "precision": precision,
            "input_dtype": "float32",
            "dynamic_hw": task.dynamic_hw,
            "size_multiple": task.size_multiple,
            "extra_inputs": task.extra_inputs,  # scalar graph inputs (thresholds) with their defaults
        }
        write_metadata(
            path,
            {
                "cnnserve.spec": json.dumps(spec_json),
                "cnnserve.parity": f"{parity:.6g}",
                "cnnserve.precision": precision,
                **extra_metadata,
            },
            doc=f"{spec.description} — exported by cnnserve; input {spec.in_channels}×{spec.input_size}, [0, 1]",
        )
        saved_tag = None
        if save:
            saved_tag = save_to_store(
                path,
                name=tag or store_tag(name, precision),
                task=spec.task,
                metadata={
                    "model": name,
                    "weights": source,
                    "precision": precision,
                    "parity": f"{parity:.6g}",
                },
            )
        seconds = time.perf_counter() - start
        logger.info("exported %s (%s) parity=%.3g in %.1fs -> %s", name, source, parity, seconds, saved_tag or path)
        return ExportResult(name, saved_tag, output, parity, source, seconds)
