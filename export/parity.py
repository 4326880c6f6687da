"""PyTorch vs onnxruntime on the same fixed batch: the number every exported file records about itself."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn as nn

__all__ = ["PARITY_TOLERANCE", "parity_batch", "measure_parity"]

PARITY_TOLERANCE = 1e-3


def parity_batch(in_channels: int, size: tuple[int, int], *, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A fixed random batch in [0, 1]: the same bytes on every machine for a given seed."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, in_channels, *size, generator=generator)


def measure_parity(
    module: nn.Module,
    path: Path,
    inputs: tuple[torch.Tensor, ...] | torch.Tensor,
    metric: Callable[[Sequence[np.ndarray], Sequence[np.ndarray]], float] | None = None,
) -> float:
    """max |ONNX − PyTorch| over every output (or ``metric(expected, got)``), on CPU (deterministic, no TF32);
    inputs fed in graph order."""
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    with torch.no_grad():
        expected = module.eval()(*inputs)
    expected = expected if isinstance(expected, (tuple, list)) else (expected,)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {meta.name: value.numpy() for meta, value in zip(session.get_inputs(), inputs, strict=True)}
    got = session.run(None, feed)
    if metric is not None:
        return float(metric([e.numpy() for e in expected], got))
    return max(
        float(np.max(np.abs(g.astype(np.float64) - e.numpy().astype(np.float64)))) if g.size else 0.0
        for g, e in zip(got, expected, strict=True)
    )
