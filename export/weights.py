"""Loading weights into our models: seeded random, torchvision's published checkpoints, demo files, user files.

Every path ends in ``load_state_dict(strict=True)``: a checkpoint that does not fit the architecture fails
loudly instead of leaving layers at random. Each loader returns the *source* string recorded in the ONNX
metadata (``random``, ``torchvision:<enum member>``, ``demo:<dataset>``, ``sha256:<digest>``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import urllib.error
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from cnnserve.models import ModelSpec

from cnnserve import models

__all__ = [
    "WeightsError",
    "DEMO_WEIGHTS_DIR",
    "torchvision_checkpoint_path",
    "load_torchvision_state_dict",
    "load_state_dict_file",
    "load_demo",
    "demo_digest",
    "apply_state_dict",
    "torchvision_spec",
]

DEMO_WEIGHTS_DIR = Path(models.__file__).resolve().parent / "weights"  # package data of cnnserve.models


class WeightsError(RuntimeError):
    """Weights that cannot be found, downloaded or loaded; the message says what to do."""


def _torchvision_weights(spec: ModelSpec) -> Any:
    from torchvision.models import get_weight

    if not spec.torchvision_weights:
        raise WeightsError(f"{spec.name} has no torchvision counterpart; use --weights random|demo|PATH")
    return get_weight(spec.torchvision_weights)


def torchvision_checkpoint_path(spec: ModelSpec) -> tuple[str, Path]:
    """(download URL, where torch hub caches it): the file to place there to work offline."""
    weights = _torchvision_weights(spec)
    return weights.url, Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def torchvision_spec(spec: ModelSpec) -> ModelSpec:
    """The spec as torchvision's published weights expect it: their eval transforms and categories."""
    weights = _torchvision_weights(spec)
    transform = weights.transforms()
    return dataclasses.replace(
        spec,
        input_size=(int(transform.crop_size[0]), int(transform.crop_size[0])),
        resize_size=int(transform.resize_size[0]),
        interpolation=transform.interpolation.value,
        labels=tuple(weights.meta["categories"]),
    )


def load_torchvision_state_dict(spec: ModelSpec) -> dict[str, torch.Tensor]:
    """Read from the torch hub cache; download when online; otherwise a clear error naming URL and cache path."""
    url, cached = torchvision_checkpoint_path(spec)
    if cached.is_file():
        return torch.load(cached, map_location="cpu", weights_only=True)
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True, weights_only=True)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        raise WeightsError(
            f"could not download torchvision weights {spec.torchvision_weights} from {url} ({exc}). "
            f"Offline? Place the file at {cached} (TORCH_HOME={torch.hub.get_dir()}) and run again."
        ) from exc


def load_state_dict_file(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """A ``.pth``/``.pt`` (loaded with ``weights_only=True``) or ``.safetensors`` file → (state dict, sha256 source)."""
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    elif path.suffix in (".pth", ".pt", ".bin"):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise WeightsError(f"{path} is not a plain state dict (weights_only=True refused it: {exc})") from exc
        # Training checkpoints often nest the weights.
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
    else:
        raise WeightsError(f"{path}: expected a .pth, .pt or .safetensors file")
    if not isinstance(state, dict):
        raise WeightsError(f"{path} does not hold a state dict")
    return state, f"sha256:{digest}"


def load_demo(spec: ModelSpec) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights ``cnnserve train`` produced and the repository ships, with their training record."""
    from safetensors.torch import load_file

    weights = DEMO_WEIGHTS_DIR / f"{spec.name}.safetensors"
    record = DEMO_WEIGHTS_DIR / f"{spec.name}.json"
    if not weights.is_file():
        shipped = sorted(p.stem for p in DEMO_WEIGHTS_DIR.glob("*.safetensors"))
        raise WeightsError(f"no demo weights for {spec.name}; shipped demo weights: {', '.join(shipped) or 'none'}")
    meta = json.loads(record.read_text()) if record.is_file() else {}
    return load_file(str(weights)), meta


def demo_digest(name: str) -> str | None:
    """sha256 of the demo weights shipped for ``name`` (None when there are none). An export records it in the
    store, so ``cnnserve export --defaults --missing-only`` (``make serve``) can tell an entry made from the weights
    of an older checkout and export again, instead of serving them after a pull brought new ones."""
    path = DEMO_WEIGHTS_DIR / f"{name}.safetensors"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def apply_state_dict(model: nn.Module, spec: ModelSpec, state: dict[str, torch.Tensor]) -> None:
    """Strict load, after the family's own key adapter if it has one (DenseNet's legacy key names)."""
    family = importlib.import_module(f"{models.__name__}.{spec.family}")
    adapt = getattr(family, "adapt_state_dict", None)
    if adapt is not None:
        state = adapt(state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"the weights do not fit {spec.name}: {exc}") from exc
