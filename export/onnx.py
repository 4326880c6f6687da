"""torch.onnx (dynamo) export with a dynamic batch, the ONNX checker, and the file's own metadata.

The file carries its contract (``cnnserve.spec``: task, input size, channels, mean/std, labels, weights'
source) so the service and any other runtime need nothing but the file.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch
import torch.nn as nn
from cnnserve.models import ModelSpec
from cnnserve.service.contract import ModelContract

__all__ = ["INPUT_NAME", "contract_for", "export_onnx", "read_contract", "read_metadata", "write_metadata"]

logger = logging.getLogger("cnnserve.export")

INPUT_NAME = "images"
OPSET = 18


def export_onnx(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: Path,
    *,
    input_names: tuple[str, ...] = (INPUT_NAME,),
    output_names: tuple[str, ...],
    dynamic_hw: bool = False,
    custom_translation_table: dict[Any, Any] | None = None,
) -> Path:
    """Export ``module(images, *rows, *extra)`` with a dynamic batch dimension (and optionally dynamic H, W).

    Every input with dimensions (the images, and further per-row inputs such as an inpainting mask) shares the one
    dynamic batch; only the first may have dynamic H and W; 0-d inputs are scalars (thresholds).
    """
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic_shapes = []
    for i, tensor in enumerate(inputs):
        dims: dict[int, Any] | None = {0: batch} if tensor.dim() > 0 else None
        if dims is not None and i == 0 and dynamic_hw:
            dims.update({2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC})
        dynamic_shapes.append(dims)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", UserWarning)
        program = torch.onnx.export(
            module.eval(),
            tuple(inputs),
            dynamo=True,
            opset_version=OPSET,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_shapes=tuple(dynamic_shapes),
            custom_translation_table=custom_translation_table,
            verbose=False,
        )
    # Weights inside the file unless protobuf's 2 GB limit forces external data (ViT-H/14); the store copies both.
    param_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    program.save(str(path), external_data=param_bytes > 1_800_000_000)
    onnx.checker.check_model(str(path), full_check=True)
    return path


def write_metadata(path: Path, props: dict[str, str], *, doc: str = "") -> None:
    """Replace the file's ``metadata_props`` with ours (weights stay where the exporter put them)."""
    proto = onnx.load(str(path), load_external_data=False)
    existing = {p.key: p.value for p in proto.metadata_props}
    existing.update(props)
    del proto.metadata_props[:]
    for key, value in existing.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "cnnserve"
    if doc:
        proto.doc_string = doc
    onnx.save(proto, str(path))


def read_metadata(path: Path) -> dict[str, Any]:
    proto = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    if "cnnserve.spec" in props:
        props["cnnserve.spec"] = json.loads(props["cnnserve.spec"])
    return props


def read_contract(path: Path) -> ModelContract:
    """The typed contract a file carries (what the service parses when it loads the file)."""
    proto = onnx.load(str(path), load_external_data=False)
    return ModelContract.from_metadata({p.key: p.value for p in proto.metadata_props})


def contract_for(spec: ModelSpec, **fields: Any) -> ModelContract:
    """The contract a registered model's export of ``spec`` will carry (``fields``: what export adds — weights'
    source, precision, parity…); the demos use it to pre-process exactly as the service will."""
    return ModelContract.model_validate({**spec.to_json_dict(), **fields})
