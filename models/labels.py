"""Label lists shipped with the models.

The 1000 ImageNet category names come from torchvision's weights metadata, which is part of the installed
package (no download), so specs carry real labels offline.
"""

from __future__ import annotations

from functools import lru_cache

__all__ = ["imagenet_categories", "DIGIT_LABELS"]

DIGIT_LABELS = tuple(str(d) for d in range(10))


@lru_cache(maxsize=1)
def imagenet_categories() -> tuple[str, ...]:
    from torchvision.models import ResNet50_Weights

    categories = tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    assert len(categories) == 1000, "torchvision's ImageNet category list changed shape"
    return categories
