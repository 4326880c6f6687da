"""Label lists shipped with the models.

The 1000 ImageNet category names come from torchvision's weights metadata, which is part of the installed
package (no download), so specs carry real labels offline.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from .registry import ModelSpec

__all__ = ["imagenet_categories", "imagenet_classifier_spec", "DIGIT_LABELS"]

DIGIT_LABELS = tuple(str(d) for d in range(10))


@lru_cache(maxsize=1)
def imagenet_categories() -> tuple[str, ...]:
    from torchvision.models import ResNet50_Weights

    categories = tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    assert len(categories) == 1000, "torchvision's ImageNet category list changed shape"
    return categories


def imagenet_classifier_spec(
    name: str,
    *,
    family: str,
    weights: str,
    description: str,
    crop: int = 224,
    resize: int = 256,
    interpolation: str = "bilinear",
    torchvision_kwargs: dict[str, Any] | None = None,
) -> ModelSpec:
    """The spec of an ImageNet classifier with a torchvision twin of the same name: the 1000 categories, ImageNet
    mean/std, and the eval recipe of its published ``weights`` (resize the shorter side, centre-crop)."""
    return ModelSpec(
        name=name,
        task="classification",
        family=family,
        input_size=(crop, crop),
        resize_size=resize,
        interpolation=interpolation,
        labels=imagenet_categories(),
        torchvision=name,
        torchvision_weights=weights,
        torchvision_kwargs=dict(torchvision_kwargs or {}),
        description=description,
    )
