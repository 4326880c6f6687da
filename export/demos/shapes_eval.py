"""The four test sets both shapes demos are scored on, and the curriculum's training pool, in one place.

* ``classic``: unseen scenes of the classic generator (:mod:`.shapes`, ``seed=HELD_OUT_SEED``), the demos' first
  training data: in-domain;
* ``randomised``: unseen scenes of the randomised training generator (:mod:`.shapes_randomised`) at full
  difficulty: in-domain;
* ``held_out``: the separately written generator's scenes (:func:`.shapes_heldout.make_held_out`), each at its
  own size: never trained on;
* ``held_out_simple``: its plain set (:func:`.shapes_heldout.make_simple_held_out`), the kind of scene issue 19
  reported failing: never trained on.

Every scene reaches a model through the service's own pre-processing (resize to the input, [0, 1]), so the
figures are what ``/detect`` and ``/segment`` answer.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .shapes import HELD_OUT_SEED, TRAIN_SEED, ShapesSample, make_dataset
from .shapes_heldout import make_held_out, make_simple_held_out
from .shapes_randomised import make_randomised

__all__ = [
    "TEST_SETS",
    "RANDOMISED_SEED",
    "PHOTO_SEED",
    "CURRICULUM",
    "VALIDATION_SEED",
    "test_set",
    "watch_sets",
    "curriculum_levels",
    "curriculum_window",
    "FineTuneStage",
    "STAGES",
    "StageLength",
    "resume",
    "later_stages",
    "Clock",
    "training_run",
]

TEST_SETS = ("classic", "randomised", "held_out", "held_out_simple")
RANDOMISED_SEED = TRAIN_SEED + 1000  # the randomised training pool; its test scenes use HELD_OUT_SEED
PHOTO_SEED = TRAIN_SEED + 2000  # stage 3's pool, half of it on photographs
PHOTO_SHARE = 0.5
PATCH_SEED = TRAIN_SEED + 3000  # stage 4's pool: flat polygons that are not shapes
PATCH_SHARE = 0.6
PATCH_PHOTOS = 0.3
FRESH_PATCH_SEED = TRAIN_SEED + 4000  # stage 5's pool: stage 4's kind of scene, other scenes
SIXTH_PATCH_SEED = TRAIN_SEED + 5000  # stage 6's pool: the same kind again, other scenes
SEVENTH_PATCH_SEED = TRAIN_SEED + 6000  # stage 7's: and again
FAINT_SEED = TRAIN_SEED + 7000  # stage 8's pool: stage 4's kind with many shapes hard to see
FAINT_SHARE = 0.5  # of stage 8's shapes
# The held-out generator's scenes the trainers watch while they run (their logs): another seed than the test set's,
# so a stage's length chosen by watching them is not chosen on the scenes the README reports.
VALIDATION_SEED = HELD_OUT_SEED + 1
LATER_CLASSIC = 1 / 8  # of each batch of stages 3 to 5: enough classic scenes that the first demo's kind stays


def test_set(name: str, n: int, size: tuple[int, int] = (128, 128), *, seed: int = HELD_OUT_SEED) -> list[ShapesSample]:
    """``n`` scenes of the test set ``name`` (one of :data:`TEST_SETS`); ``size`` is the input size the in-domain
    generators draw at (the held-out ones draw at their own sizes). ``seed``: the README's sets are at
    ``HELD_OUT_SEED``; :func:`watch_sets` draws the same kinds at :data:`VALIDATION_SEED`."""
    if name == "classic":
        return make_dataset(n, size=size, seed=seed)
    if name == "randomised":
        return make_randomised(n, seed=seed, size=size, levels=1.0)
    if name == "held_out":
        return make_held_out(n, seed=seed)
    if name == "held_out_simple":
        return make_simple_held_out(n, seed=seed)
    raise ValueError(f"unknown test set {name!r}; one of {', '.join(TEST_SETS)}")


test_set.__test__ = False  # not a pytest test


def watch_sets(size: tuple[int, int], n: int = 100) -> dict[str, list[ShapesSample]]:
    """What the trainers score in their logs every few hundred steps: ``n`` classic, randomised and held-out
    scenes at :data:`VALIDATION_SEED`, none of them a scene of the test sets (those are at ``HELD_OUT_SEED``)."""
    return {name: test_set(name, n, size, seed=VALIDATION_SEED) for name in ("classic", "randomised", "held_out")}


def curriculum_levels(n: int) -> np.ndarray:
    """The pool's difficulty: scene ``i`` of ``n`` at level (i + ½) / n, easy to hard, so a curriculum that draws
    from a window of indices moving up the pool draws harder scenes as it goes."""
    return (np.arange(n) + 0.5) / n


# How the second training stage of both demos draws a batch, in words for their training records.
CURRICULUM = (
    "half of a batch at first, a fifth from 60 % on) and shapes_randomised.make_randomised({pool}, seed={seed}) with "
    "scene i at level (i + 0.5) / {pool}, drawn from a window of 60 % of the pool moving from its easiest scenes to "
    "its hardest by 60 % of the steps"
)


def curriculum_window(step: int, steps: int, batch_size: int, pool: int) -> tuple[int, int, int]:
    """Where batch ``step`` of ``steps`` draws from: how many of its ``batch_size`` scenes are classic ones, and the
    window ``[low, high)`` of the randomised pool's indices the rest come from (see :data:`CURRICULUM`). Both
    trainers follow one schedule, so their records describe the same thing."""
    progress = min(1.0, step / (0.6 * steps))
    n_classic = round(batch_size * (0.5 - 0.3 * progress))
    top = min(1.0, 0.15 + 0.85 * progress)  # the window over the pool: [top − 0.6, top)
    return n_classic, int(max(0.0, top - 0.6) * pool), max(1, int(top * pool))


STAGE3 = (
    "{classic} classic scenes per batch and the rest drawn at random from "
    "shapes_randomised.make_randomised({pool}, seed={seed}, photos={photos}) with scene i at level "
    "0.5 + 0.5 (i + 0.5) / {pool} (half of them on crops of photographs)"
)
STAGE4 = (
    "{classic} classic scenes per batch and the rest drawn at random from "
    "shapes_randomised.make_randomised({pool}, seed={seed}, photos={photos}, patches={patches}) with scene i at "
    "level 0.5 + 0.5 (i + 0.5) / {pool} (flat polygons that are not shapes behind the shapes of {patches:.0%} of them)"
)
STAGE8 = (
    "{classic} classic scenes per batch and the rest drawn at random from "
    "shapes_randomised.make_randomised({pool}, seed={seed}, photos={photos}, patches={patches}, faint={faint}) with "
    "scene i at level 0.5 + 0.5 (i + 0.5) / {pool} ({faint:.0%} of the shapes hard to see: faint, thin outlines)"
)


@dataclass(frozen=True)
class FineTuneStage:
    """How a fine-tuning stage of both shapes trainers draws its batches: its randomised pool and the classic
    scenes in each batch. Stage 2 is the curriculum (easy to hard, a moving window); stage 3 the harder half of the
    range, half on photographs (the drawn backgrounds have no real scene's edges and textures), drawn whole; stage 4
    the same range with flat polygons that are not shapes behind the shapes of most scenes (without them a flat area
    with straight edges is a square or a triangle to a model), drawn whole; stage 5 stage 4's kind on other scenes;
    stage 8 that kind with half of the shapes hard to see (faint, thin outlines)."""

    seed: int  # the pool's seed, before the run's own seed is added
    lowest_level: float  # scene i of n at level lowest + (1 − lowest)(i + ½)/n
    photos: float  # the share of the pool drawn on photographs
    patches: float  # the share of the pool with flat polygons that are not shapes on its background
    classic_share: float | None  # of each batch; None: the curriculum's moving window (curriculum_window)
    text: str  # for the records: a format string of pool, seed, classic, photos, patches, faint
    faint: float = 0.0  # the share of shapes drawn hard to see (shapes_randomised.FAINT)

    def pool(self, n: int, seed: int, size: tuple[int, int], workers: int) -> list[ShapesSample]:
        levels = self.lowest_level + (1 - self.lowest_level) * curriculum_levels(n)
        return make_randomised(n, seed=self.seed + seed, size=size, levels=levels, workers=workers,
                               photos=self.photos, patches=self.patches, faint=self.faint)  # fmt: skip

    def window(self, step: int, steps: int, batch_size: int, n: int) -> tuple[int, int, int]:
        """How many of batch ``step``'s scenes are classic ones, and the window ``[low, high)`` of the pool the
        rest come from."""
        if self.classic_share is None:
            return curriculum_window(step, steps, batch_size, n)
        return round(batch_size * self.classic_share), 0, n

    def describe(self, n: int, seed: int, batch_size: int) -> str:
        classic = None if self.classic_share is None else round(batch_size * self.classic_share)
        seed = self.seed + seed
        return self.text.format(
            pool=n, seed=seed, classic=classic, photos=self.photos, patches=self.patches, faint=self.faint
        )


STAGES = {
    2: FineTuneStage(RANDOMISED_SEED, lowest_level=0.0, photos=0.0, patches=0.0, classic_share=None, text=CURRICULUM),
    3: FineTuneStage(
        PHOTO_SEED, lowest_level=0.5, photos=PHOTO_SHARE, patches=0.0, classic_share=LATER_CLASSIC, text=STAGE3
    ),
    4: FineTuneStage(
        PATCH_SEED,
        lowest_level=0.5,
        photos=PATCH_PHOTOS,
        patches=PATCH_SHARE,
        classic_share=LATER_CLASSIC,
        text=STAGE4,
    ),
}
# Stage 4 again on a pool of other scenes: the held-out validation scenes still improved at its end.
STAGES[5] = replace(STAGES[4], seed=FRESH_PATCH_SEED)
# And again, twice (the convolutional YOLO's stages with confidences pulled to 1, ``yolo_shapes.CONV_STAGES``), on
# scenes the stages before did not see.
STAGES[6] = replace(STAGES[4], seed=SIXTH_PATCH_SEED)
STAGES[7] = replace(STAGES[4], seed=SEVENTH_PATCH_SEED)
# Stage 4's kind with many shapes hard to see (faint, thin outlines): what the convolutional YOLO still missed.
STAGES[8] = replace(STAGES[4], seed=FAINT_SEED, faint=FAINT_SHARE, text=STAGE8)


@dataclass(frozen=True)
class StageLength:
    """How long one of the later stages (3 and on) of a trainer runs; ``steps=0`` leaves it out."""

    steps: int
    pool: int  # randomised scenes drawn for it
    lr: float  # the one-cycle schedule's peak


def resume(model, weights: Path) -> dict[str, str]:
    """Load ``weights`` (a run's weights after some of its stages) into ``model``; return the stages they went
    through as the record beside them describes them (``{"stage1": …, "stage2": …}``; a stage left out reads
    ``"none"``), so a run can go on with the stages after the last one run. Every stage starts its own random
    streams, so stages run this way give the weights one run of them all gives."""
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(weights)), strict=True)
    record = json.loads(weights.with_suffix(".json").read_text())
    return {key: record[key] for key in sorted(record) if key.startswith("stage") and key[5:].isdigit()}


def later_stages(done: dict[str, str], lengths: dict[int, StageLength], run) -> dict[str, str]:
    """The records of stages 3 and on: those ``done`` (weights resumed from) as they were, the ones after the last
    stage run there run now with ``run(stage, length)`` (it returns the stage's record), and ``"none"`` for those of
    0 steps."""
    last = max((int(key[5:]) for key, text in done.items() if text != "none"), default=0)
    texts = {}
    for stage, length in sorted(lengths.items()):
        key = f"stage{stage}"
        if stage <= last:
            texts[key] = done.get(key, "none")
        else:
            texts[key] = "none" if length.steps <= 0 else run(stage, length)
    return texts


class Clock:
    """Time since a training run started: ``clock()`` is "123 s" for the logs, ``seconds()`` for the report
    (never for a committed record)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def __call__(self) -> str:
        return f"{self.seconds():.0f} s"


@contextmanager
def training_run(seed: int, workers: int | None) -> Iterator[tuple[Clock, int]]:
    """The frame of every shapes trainer's run: one intra-op thread while it lasts (the same arithmetic, so the same
    weights, on any machine with this torch, and on a shared machine faster than threads that wait for each other),
    torch's global seed set before the model is built (its first weights), a clock, and how many processes draw
    the scenes (``workers``, else up to 4 of the machine's cores: the scenes are the same for any number)."""
    import torch

    clock = Clock()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        yield clock, workers or min(4, os.cpu_count() or 1)
    finally:
        torch.set_num_threads(threads)
