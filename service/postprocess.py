"""Model outputs → the JSON answers of the contract, shared by the service and the batch scorer.

Softmax already happened in the graph (``probabilities``), so classification post-processing is only ranking;
there is no second softmax here and no ranking of raw logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import BadInput

__all__ = ["rank_classes", "check_top_k"]


def check_top_k(top_k: int, num_classes: int, model: str) -> int:
    if not 1 <= top_k <= num_classes:
        raise BadInput(f"top_k must be between 1 and {num_classes} for model {model!r}, got {top_k}")
    return top_k


def rank_classes(probabilities: np.ndarray, k: int, labels: Sequence[str] | None) -> list[dict]:
    """Best-first ``[{"index", "label", "score"}]`` for one image's probability vector."""
    probs = np.asarray(probabilities, dtype=np.float32).reshape(-1)
    k = min(k, probs.shape[0])
    # argpartition then sort the k winners: O(K) instead of sorting all 1000 classes.
    idx = np.argpartition(-probs, k - 1)[:k]
    idx = idx[np.argsort(-probs[idx], kind="stable")]
    return [
        {
            "index": int(i),
            "label": labels[i] if labels is not None and i < len(labels) else str(int(i)),
            "score": float(probs[i]),
        }
        for i in idx
    ]
