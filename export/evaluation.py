"""A demo file's own held-out figures, and the reference gallery an embedding model carries — measured through
onnxruntime on the very file that is saved (a precision variant is measured as itself), and written into its
contract (``cnnserve.evaluation``, ``cnnserve.gallery``) by ``cnnserve export``.

* **Embeddings** (a file with an ``embedding`` output and demo weights trained on the digits — the two CAEs,
  LeNet-5):
  the accuracy of a k-nearest-neighbour classifier (k = ``KNN_K``, Euclidean distance between the unit vectors)
  that knows the embeddings of the digits training split and labels the test split; and the gallery: the test
  split's embeddings, labels, 8×8 thumbnails and a 2-D t-SNE map of them (scikit-learn, fixed seed).
* **Inpainting** on the digits: PSNR inside rectangles covering 25 % of each test digit, against filling each hole
  with the mean of its border (:mod:`export.demos.inpaint_digits`).
* **Generation** on the digits: ``JUDGE_SAMPLES`` samples from the service's own codes, judged by the LeNet-5 demo:
  the share classified with probability ≥ 0.9, and how many of the ten digits appear (:mod:`export.demos.vae_digits`).

Any other file gets nothing here: these figures need the data the demo was trained on.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from cnnserve.service.contract import Evaluation, Gallery, ModelContract

from .quality import _demo_dataset, _session, run_onnx

__all__ = ["KNN_K", "evaluate_file", "digits_embeddings"]

KNN_K = 5
KNN_GOAL = 0.95
INPAINT_GAIN_GOAL_DB = 3.0
CONFIDENT_GOAL = 0.8
DIGITS_GOAL = 8
TSNE_SEED = 0


def _digits_inputs(contract: ModelContract, images: np.ndarray) -> np.ndarray:
    from .quality import _digits

    return _digits(images, contract.preprocess)


def digits_embeddings(contract: ModelContract, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The file's ``embedding`` of the digits training and test splits (float32, one row per image); an inpainting
    model gets an empty mask, as ``/embed`` sends it."""
    from .demos.digits import digits_split

    split = digits_split()
    session = _session(path)
    index = [o.name for o in session.get_outputs()].index("embedding")

    def embed(images: np.ndarray) -> np.ndarray:
        x = _digits_inputs(contract, images)
        if "mask" in contract.inputs:
            feed = {"images": x, "mask": np.zeros((len(x), 1, *x.shape[2:]), dtype=np.float32)}
            return session.run(["embedding"], feed)[0]
        return np.concatenate(run_onnx(session, x, **contract.extra_inputs)[index])

    return embed(split.train_images), embed(split.test_images)


@functools.lru_cache(maxsize=8)
def _tsne(digest: str, vectors: bytes, shape: tuple[int, int]) -> np.ndarray:
    """The 2-D map, scaled into [-1, 1]; cached by content, as the tests export the same file many times."""
    from sklearn.manifold import TSNE

    x = np.frombuffer(vectors, dtype=np.float32).reshape(shape)
    points = TSNE(n_components=2, perplexity=30.0, init="pca", random_state=TSNE_SEED).fit_transform(x)
    points = points - points.mean(axis=0)
    return (points / np.abs(points).max()).astype(np.float32)


def _embedding_figures(contract: ModelContract, path: Path) -> tuple[list[Evaluation], Gallery]:
    from sklearn.neighbors import KNeighborsClassifier

    from .demos.digits import digits_split

    split = digits_split()
    train, test = digits_embeddings(contract, path)
    knn = KNeighborsClassifier(n_neighbors=KNN_K).fit(train, split.train_labels)
    accuracy = float(knn.score(test, split.test_labels))
    data = f"digits test split ({len(test)}), k-NN (k={KNN_K}) on the training split's {len(train)} embeddings"
    raw = np.ascontiguousarray(test, dtype=np.float32)
    points = _tsne(hashlib.sha256(raw.tobytes()).hexdigest(), raw.tobytes(), raw.shape)
    gallery = Gallery(
        data=f"digits test split ({len(test)} images, all ten digits)",
        count=len(test),
        dim=test.shape[1],
        labels=tuple(str(int(label)) for label in split.test_labels),
        embeddings=Gallery.encode(test, "float16"),
        map_method=f"t-SNE of the gallery's embeddings (perplexity 30, seed {TSNE_SEED}); an upload is placed at "
        "the inverse-distance weighted mean of its 5 nearest gallery images",
        map=Gallery.encode(points, "float32"),
        thumbnail_size=split.test_images.shape[1:],
        thumbnails=Gallery.encode(split.test_images, "uint8"),
    )
    # The goal is for the autoencoder of all ten digits (the inpainting CAE, /embed's default); the
    # denoising CAE never saw an 8 or a 9, and the classifiers' features are trained on the labels themselves.
    goal = KNN_GOAL if contract.task == "inpainting" else None
    return [Evaluation(metric="knn_accuracy", value=round(accuracy, 4), data=data, goal=goal)], gallery


def _inpainting_figures(contract: ModelContract, path: Path) -> tuple[list[Evaluation], None]:
    from .demos.inpaint_digits import HOLE_SHARE, evaluate_filling

    session = _session(path)
    names = [i.name for i in session.get_inputs()]

    def fill(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        return session.run(["inpainted"], dict(zip(names, (images, masks), strict=True)))[0]

    measured = evaluate_filling(fill)
    data = f"digits test split ({measured['images']}), one rectangle over {HOLE_SHARE:.0%} of each digit's box"
    return [
        Evaluation(metric="hole_psnr_db", value=round(measured["hole_psnr_db"], 3), data=data),
        Evaluation(metric="border_mean_psnr_db", value=round(measured["baseline_psnr_db"], 3), data=data),
        Evaluation(
            metric="hole_psnr_gain_db", value=round(measured["psnr_gain_db"], 3), data=data, goal=INPAINT_GAIN_GOAL_DB
        ),
    ], None


def _generation_figures(contract: ModelContract, path: Path) -> tuple[list[Evaluation], None]:
    from .demos.vae_digits import CONFIDENT, JUDGE_SAMPLES, JUDGE_SEED, draw_samples, judge_samples

    session = _session(path)
    judged = judge_samples(draw_samples(lambda noise: session.run(None, {"noise": noise})[0], contract.noise_dim))
    data = f"{JUDGE_SAMPLES} samples (seed {JUDGE_SEED}) judged by the LeNet-5 demo"
    return [
        Evaluation(
            metric=f"judge_confident_share_p{CONFIDENT:g}",
            value=round(judged["confident_share"], 4),
            data=data,
            goal=CONFIDENT_GOAL,
        ),
        Evaluation(metric="judge_digits_present", value=len(judged["digits_present"]), data=data, goal=DIGITS_GOAL),
    ], None


Figures = Callable[[ModelContract, Path], tuple[list[Evaluation], Gallery | None]]
# model task → the figures of a file trained on the digits (by its demo weights' data set)
_DIGITS_FIGURES: dict[str, Figures] = {
    "inpainting": _inpainting_figures,
    "generation": _generation_figures,
}


def evaluate_file(contract: ModelContract, path: Path) -> tuple[tuple[Evaluation, ...], Gallery | None]:
    """The file's held-out figures and gallery, or ``((), None)`` for a file whose weights are no digits demo."""
    dataset = _demo_dataset(contract) or ""
    if not dataset.startswith("sklearn-digits"):
        return (), None
    figures: list[Evaluation] = []
    gallery = None
    if "embedding" in contract.outputs:
        figures, gallery = _embedding_figures(contract, path)
    extra = _DIGITS_FIGURES.get(contract.task)
    if extra is not None:
        more, _ = extra(contract, path)
        figures += more
    return tuple(figures), gallery
