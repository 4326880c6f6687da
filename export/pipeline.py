"""``cnnserve export``: build → load weights → wrap → export ONNX → parity → [variant] → metadata → model store.

One function, :func:`export_model`, so the CLI, ``make serve`` (the default set) and the tests export the same
way. A precision variant (fp16, int8) or the uint8-input variant is made from the checked fp32 file
(:mod:`export.precision`) and its quality is measured against that file (:mod:`export.quality`) before it is
saved; the fp32 graph's parity with PyTorch stays the file's ``cnnserve.parity``. A demo's file also gets its own
held-out figures and, for embedding models, its reference gallery (:mod:`export.evaluation`), measured on the file
that is saved.
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
from cnnserve.models import ModelSpec
from cnnserve.service.contract import Evaluation, ModelContract, Quality

from cnnserve import models

from .onnx import INPUT_NAME, contract_for, export_onnx, write_metadata
from .parity import PARITY_TOLERANCE, measure_parity, parity_batch
from .precision import INPUT_DTYPES, PRECISIONS, make_variant
from .store import save_to_store
from .weights import (
    apply_state_dict,
    demo_digest,
    load_demo,
    load_state_dict_file,
    load_torchvision_state_dict,
    torchvision_spec,
)
from .wrappers import ClassifierExport, export_for

__all__ = ["DEFAULT_EXPORTS", "PRECISIONS", "INPUT_DTYPES", "ExportError", "ExportResult", "export_model", "store_tag"]

logger = logging.getLogger("cnnserve.export")

# What `make serve` exports when the store lacks it: (model name, weights). Demo weights ship in the repository.
DEFAULT_EXPORTS: tuple[tuple[str, str], ...] = (
    ("lenet5", "demo"),
    ("yolov1_shapes_conv", "demo"),
    ("cae", "demo"),
    ("unet", "demo"),
    ("cae_inpaint", "demo"),
    ("cvae", "demo"),
)


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
    precision: str = "fp32"
    input_dtype: str = "float32"
    quality: dict[str, object] | None = None  # the variant vs its fp32 file (export.quality.Quality), None for fp32
    evaluation: tuple[Evaluation, ...] = ()  # the file's own held-out figures (demo weights)


def store_tag(name: str, precision: str, input_dtype: str = "float32") -> str:
    """``resnet50``, ``resnet50-int8``, ``resnet50-fp16-u8`` (the contract's tags, ``-u8`` for uint8 input)."""
    tag = name if precision == "fp32" else f"{name}-{precision}"
    return f"{tag}-u8" if input_dtype == "uint8" else tag


def _load_weights(model: torch.nn.Module, spec: ModelSpec, weights: str) -> tuple[ModelSpec, str, dict[str, object]]:
    """Load ``weights`` into ``model``; returns the spec to record (torchvision weights bring their transforms),
    the source string, and contract fields the weights carry (a demo's calibrated anomaly ``threshold``)."""
    if weights == "random":
        return spec, "random", {}
    if weights == "torchvision":
        state = load_torchvision_state_dict(spec)
        apply_state_dict(model, spec, state)
        return torchvision_spec(spec), f"torchvision:{spec.torchvision_weights}", {}
    if weights == "demo":
        state, record = load_demo(spec)
        apply_state_dict(model, spec, state)
        return spec, f"demo:{record.get('dataset', 'unknown')}", dict(record.get("onnx_metadata", {}))
    state, source = load_state_dict_file(Path(weights))
    apply_state_dict(model, spec, state)
    return spec, source, {}


def export_model(
    name: str,
    *,
    weights: str = "random",
    precision: str = "fp32",
    input_dtype: str = "float32",
    calibration: Path | None = None,
    tag: str | None = None,
    output: Path | None = None,
    num_classes: int | None = None,
    save: bool = True,
    seed: int = 0,
    embedding: bool = True,
) -> ExportResult:
    """Export one registered model; raises :class:`ExportError`/:class:`WeightsError` with an actionable message.

    ``precision`` fp16 / int8 and ``input_dtype`` uint8 make a variant of the fp32 export; int8 calibrates on
    ``calibration`` (a folder of images) or, by default, on the demo's training data or ``skimage.data`` photos.
    ``embedding=False`` leaves the ``embedding`` output out of the graph (``/embed`` then refuses the file): Triton's
    ``image_client.py`` takes only models with one output.
    """
    start = time.perf_counter()
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if input_dtype not in INPUT_DTYPES:
        raise ExportError(f"unknown input dtype {input_dtype!r}; choose one of {', '.join(INPUT_DTYPES)}")
    if calibration is not None and precision != "int8":
        raise ExportError("--calibration is for --precision int8 only")
    if calibration is not None and not calibration.is_dir():
        raise ExportError(f"calibration folder {calibration} does not exist")
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

    task = export_for(spec)
    if precision not in task.precisions or (input_dtype == "uint8" and not task.uint8_input):
        allowed = ", ".join(task.precisions) + (" and uint8 input" if task.uint8_input else "; float32 input only")
        raise ExportError(f"{name} ({spec.task}) is exported in {allowed}")
    torch.manual_seed(seed)  # "random" weights are reproducible
    model = models.build_model(name, **overrides).eval()
    spec, source, carried = _load_weights(model, spec, weights)
    outputs = task.outputs
    if embedding:
        wrapped = task.wrapper(model, spec).eval()
    elif task.wrapper is ClassifierExport:
        outputs = tuple(o for o in task.outputs if o != "embedding")
        wrapped = ClassifierExport(model, spec, embedding=False).eval()
    else:
        raise ExportError(f"{name} ({spec.task}): only a classifier's embedding output can be left out")

    if task.example is not None:  # per-row graph inputs other than the images alone (a mask, latent codes)
        examples = task.example(spec, seed)
    else:
        examples = {INPUT_NAME: parity_batch(spec.in_channels, spec.input_size, batch=2, seed=seed)}
    rows = tuple(examples.values())
    extra = tuple(torch.tensor(value, dtype=torch.float32) for value in task.extra_inputs.values())
    tolerance = task.parity_tolerance if task.parity_tolerance is not None else PARITY_TOLERANCE
    variant = precision != "fp32" or input_dtype != "float32"
    with tempfile.TemporaryDirectory(prefix="cnnserve-export-") as tmp:
        path = output if output is not None else Path(tmp) / "model.onnx"
        fp32_path = Path(tmp) / "fp32" / "model.onnx" if variant else path  # a variant is made from this file
        export_onnx(
            wrapped,
            (*rows, *extra),
            fp32_path,
            input_names=(*examples, *task.extra_inputs),
            output_names=outputs,
            dynamic_hw=task.dynamic_hw,
            custom_translation_table=task.onnx_translations,
        )
        parity = measure_parity(wrapped, fp32_path, (*rows, *extra), task.parity_metric)
        if not parity <= tolerance:
            raise ExportError(
                f"{name}: ONNX output differs from PyTorch by {parity:.3g} (> {tolerance}); file not saved"
            )
        contract = contract_for(
            spec,
            **carried,
            weights=source,
            precision=precision,
            input_dtype=input_dtype,
            dynamic_hw=task.dynamic_hw,
            size_multiple=task.size_multiple,
            extra_inputs=task.extra_inputs,  # scalar graph inputs (thresholds) with their defaults
            inputs=tuple(examples),
            outputs=outputs,
            parity=parity,
        )
        quality = None
        if variant:
            _make_variant(fp32_path, path, contract, precision, input_dtype, calibration, task.extra_inputs)
            from .quality import measure_quality

            measured = measure_quality(contract, fp32_path, path)
            contract = contract.model_copy(update={"quality": Quality.model_validate(measured.to_json_dict())})
            quality = measured.to_json_dict()
            logger.debug("%s %s/%s quality: %s", name, precision, input_dtype, quality)
        from .evaluation import evaluate_file

        evaluation, gallery = evaluate_file(contract, path)
        if evaluation or gallery is not None:
            contract = contract.model_copy(update={"evaluation": evaluation, "gallery": gallery})
            for figure in evaluation:
                logger.debug("%s %s: %.4g on %s", name, figure.metric, figure.value, figure.data)
        pixels = "uint8 0-255" if input_dtype == "uint8" else "float32 [0, 1]"
        write_metadata(
            path,
            contract.to_metadata(),
            doc=f"{spec.description} — exported by cnnserve ({precision}); "
            f"input {spec.in_channels}×{spec.input_size}, {pixels}",
        )
        saved_tag = None
        if save:
            store_metadata = {
                "model": name,
                "weights": source,
                "precision": precision,
                "input_dtype": input_dtype,
                "parity": f"{parity:.6g}",
            }
            if weights == "demo":
                store_metadata["weights_sha256"] = demo_digest(spec.name)
            if quality is not None:
                store_metadata["quality"] = json.dumps(quality)
            saved_tag = save_to_store(
                path,
                name=tag or store_tag(name, precision, input_dtype),
                task=spec.task,
                metadata=store_metadata,
            )
        seconds = time.perf_counter() - start
        logger.debug("exported %s (%s) parity=%.3g in %.1fs -> %s", name, source, parity, seconds, saved_tag or path)
        return ExportResult(
            name, saved_tag, output, parity, source, seconds, precision, input_dtype, quality, evaluation
        )


def _make_variant(
    fp32_path: Path,
    path: Path,
    contract: ModelContract,
    precision: str,
    input_dtype: str,
    calibration: Path | None,
    extra_inputs: dict[str, float],
) -> None:
    """The checked fp32 file → the requested precision (and uint8 input) at ``path``."""
    images = []
    if precision == "int8":
        from .quality import calibration_images

        try:
            images = calibration_images(contract, folder=calibration)
        except ValueError as exc:
            raise ExportError(str(exc)) from None
    make_variant(
        fp32_path,
        path,
        precision=precision,
        input_dtype=input_dtype,
        calibration=images,
        extra_inputs=extra_inputs,
    )
