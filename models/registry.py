"""The one model registry: every name the project knows, with a typed spec of what the model expects.

Export, the CLI, the service (through the spec copied into each ONNX file) and the tests all ask this registry;
nothing else keeps a list of model names. A family file registers its public builders with
:func:`register_model`, passing the :class:`ModelSpec` that describes the input contract (size, channels,
normalisation), the labels, and the torchvision builder whose state dict ours loads strictly.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TASKS",
    "ModelSpec",
    "register_model",
    "list_models",
    "build_model",
    "get_spec",
    "get_builder",
    "representatives",
]

TASKS = (
    "classification",
    "detection",
    "semantic_segmentation",
    "instance_segmentation",
    "autoencoder",
    "inpainting",
    "generation",
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """What a model expects and what it answers, as data.

    ``input_size`` is the tensor the network sees (H, W). ``resize_size`` is the shorter-side resize applied
    before the centre crop to ``input_size`` (the torchvision eval recipe); ``None`` means "resize straight to
    ``input_size``" (small models such as LeNet-5 that see the whole image). With ``max_size`` too, the image keeps
    its aspect and is not cropped (detectors that take any size; ``input_size`` is then only the export example).
    """

    name: str
    task: str
    family: str
    input_size: tuple[int, int]
    in_channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    resize_size: int | None = None
    # Detection recipe (torchvision's GeneralizedRCNNTransform): with max_size set, the shorter side goes to
    # resize_size unless the longer would pass max_size, the aspect is kept and nothing is cropped.
    max_size: int | None = None
    interpolation: str = "bilinear"
    # The RGB colour of the data's background, where transparent pixels of an upload are composited: white for
    # photos (a transparent area reads as paper), black for the digits (light ink on black).
    background: tuple[int, int, int] = (255, 255, 255)
    num_classes: int = 1000
    labels: tuple[str, ...] | None = None
    torchvision: str | None = None
    # torchvision weights enum member used by `--weights torchvision`, e.g. "ResNet50_Weights.IMAGENET1K_V1".
    torchvision_weights: str | None = None
    # Builder keyword arguments needed to reproduce the published torchvision weights' behaviour.
    torchvision_kwargs: dict[str, Any] = field(default_factory=dict)
    # Generators: numbers of standard normal noise per generated image (the graph's input).
    noise_dim: int | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"{self.name}: unknown task {self.task!r}; expected one of {TASKS}")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError(f"{self.name}: mean/std must have one entry per input channel")
        if self.labels is not None and len(self.labels) != self.num_classes:
            raise ValueError(f"{self.name}: {len(self.labels)} labels for {self.num_classes} classes")

    def with_overrides(self, **changes: Any) -> ModelSpec:
        """A copy with some fields replaced (e.g. ``num_classes`` and ``labels`` for a fine-tuned head)."""
        if "num_classes" in changes and "labels" not in changes and changes["num_classes"] != self.num_classes:
            changes["labels"] = None
        return dataclasses.replace(self, **changes)

    def to_json_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict: what goes into the ONNX file's ``cnnserve.spec`` metadata."""
        d = dataclasses.asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        d["labels"] = list(self.labels) if self.labels is not None else None
        return d


_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_SPECS: dict[str, ModelSpec] = {}
_REPRESENTATIVES: dict[str, str] = {}  # family → the member tests and benchmarks use for the whole family

# Family modules register themselves on import; importing them lazily keeps `import models` cheap.
_FAMILY_MODULES = (
    "lenet",
    "alexnet",
    "vgg",
    "googlenet",
    "resnet",
    "densenet",
    "efficientnet",
    "vit",
    "unet",
    "cae",
    "vae",
    "yolo",
    "rcnn",
)
_loaded = False


def register_model(
    spec: ModelSpec, *, representative: bool = False
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator for a public builder; refuses a name registered twice (a copy-paste mistake, always).

    A family's *representative* — the member the tests and benchmarks time or export for the whole family — is
    its first registered model, unless a member says ``representative=True`` (ViT: B/32 costs a quarter of B/16's
    compute for the same code)."""

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if spec.name in _SPECS:
            raise ValueError(f"model {spec.name!r} is already registered")
        _SPECS[spec.name] = spec
        _BUILDERS[spec.name] = builder
        if representative or spec.family not in _REPRESENTATIVES:
            _REPRESENTATIVES[spec.family] = spec.name
        return builder

    return decorator


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    for module in _FAMILY_MODULES:
        importlib.import_module(f"{__package__}.{module}")
    _loaded = True


def list_models(task: str | None = None) -> list[str]:
    """Registered names in registration order (families in paper order), optionally for one task."""
    _ensure_loaded()
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    return [name for name, spec in _SPECS.items() if task is None or spec.task == task]


def representatives(task: str | None = None) -> list[str]:
    """One model per family (of ``task``), in registration order: what "every family" means to a test or a
    benchmark, asked of the registry so that a new family is covered the day it is registered."""
    names = set(list_models(task))
    return [name for name in _REPRESENTATIVES.values() if name in names]


def get_spec(name: str) -> ModelSpec:
    """The spec of a registered model; a KeyError that lists the known names otherwise."""
    _ensure_loaded()
    try:
        return _SPECS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(_SPECS)}") from None


def get_builder(name: str) -> Callable[..., nn.Module]:
    get_spec(name)
    return _BUILDERS[name]


def build_model(name: str, **overrides: Any) -> nn.Module:
    """Build a randomly initialised model, e.g. ``build_model("resnet18", num_classes=10)``."""
    return get_builder(name)(**overrides)
