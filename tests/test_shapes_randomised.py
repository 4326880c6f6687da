"""The randomised training generator of the shapes demos and the training stages that draw from it.

``export/demos/shapes_randomised.py`` makes the scenes stages 2 to 4 of both shapes demos train on; what the
demos learn is only as true as its masks and boxes, and a retraining reproduces the shipped weights only if a
scene is its seed (in one process or several).
"""

from __future__ import annotations

import numpy as np
import pytest
from cnnserve.export.demos import shapes_randomised
from cnnserve.export.demos.shapes import CLASSES
from cnnserve.export.demos.shapes_eval import (
    STAGES,
    StageLength,
    curriculum_window,
    later_stages,
    test_set,
    watch_sets,
)
from cnnserve.export.demos.shapes_heldout import TEXTURES
from cnnserve.export.demos.shapes_randomised import PHOTOS, make_randomised, make_randomised_sample


@pytest.fixture
def photo_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The (height, width) of every photograph background drawn while the test runs (in this process)."""
    calls: list[tuple[int, int]] = []
    original = shapes_randomised._photo
    monkeypatch.setattr(shapes_randomised, "_photo", lambda rng, h, w: calls.append((h, w)) or original(rng, h, w))
    return calls


class _Recording:
    """Stands in for an ``ImageDraw``: keeps every polygon drawn on it and passes it on to ``draw``, if any."""

    def __init__(self, draw=None) -> None:
        self.draw, self.polygons = draw, []

    def polygon(self, points, **style) -> None:
        self.polygons.append(points)
        if self.draw is not None:
            self.draw.polygon(points, **style)


@pytest.fixture
def patch_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[list[tuple[float, float]]]]:
    """The polygons of every call of ``_patches`` while the test runs (in this process): one list per scene."""
    calls: list[list[list[tuple[float, float]]]] = []
    original = shapes_randomised._patches

    def record(rng, draw, h, w, short):
        recording = _Recording(draw)
        original(rng, recording, h, w, short)
        calls.append(recording.polygons)

    monkeypatch.setattr(shapes_randomised, "_patches", record)
    return calls


def _same(a, b) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("image", "mask", "boxes", "labels"))


def test_a_scene_is_its_seed_in_one_process_or_several() -> None:
    one = make_randomised(8, seed=3, levels=np.linspace(0, 1, 8), photos=0.5)
    several = make_randomised(8, seed=3, levels=np.linspace(0, 1, 8), photos=0.5, workers=2)
    assert all(_same(a, b) for a, b in zip(one, several, strict=True))
    other = make_randomised(8, seed=4, levels=np.linspace(0, 1, 8), photos=0.5)
    assert not any(np.array_equal(a.image, b.image) for a, b in zip(one, other, strict=True))


@pytest.mark.parametrize(("photos", "patches", "faint"), [(0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0),
                                                      (0.0, 0.0, 1.0)])  # fmt: skip
def test_masks_and_boxes_describe_the_drawn_shapes(photos: float, patches: float, faint: float) -> None:
    for i in range(16):
        rng = np.random.default_rng((11, i))
        sample = make_randomised_sample(rng, (128, 128), level=1.0, photos=photos, patches=patches, faint=faint)
        assert sample.image.shape == (128, 128, 3) and sample.image.dtype == np.uint8
        assert len(sample.boxes) == len(sample.labels)
        assert set(np.unique(sample.mask).tolist()) <= {0, *sample.labels.tolist()}
        assert set(sample.labels.tolist()) <= set(range(1, len(CLASSES)))
        for box, label in zip(sample.boxes, sample.labels, strict=True):
            x1, y1, x2, y2 = box
            assert 0 <= x1 < x2 <= 128 and 0 <= y1 < y2 <= 128
            # Some pixels of the object's class lie in its box (the box was taken before the resize, so its
            # edges are not exact pixel rows here).
            assert (sample.mask[int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))] == label).any()


def test_photos_ship_with_the_packages_and_are_not_the_held_out_textures() -> None:
    """Training on a held-out picture would make the held-out figures a measure of memory."""
    for name in PHOTOS:
        pixels = shapes_randomised._photo_pixels(name)  # no download: offline machines train too
        assert pixels.ndim == 3 and pixels.shape[2] == 3 and min(pixels.shape[:2]) >= 256
        assert name.split(":")[1] not in TEXTURES
    assert "skimage:chelsea" not in PHOTOS and "skimage:cat" not in PHOTOS  # chelsea is a held-out texture


def test_photos_change_only_the_background_share_asked_for(photo_calls: list) -> None:
    """``photos=0`` draws nothing more from a scene's generator than before the option existed (stage 2's pool,
    and so the weights it trains, stay what they were); ``photos=1`` puts every scene on a photograph."""
    make_randomised(6, seed=1, levels=1.0, photos=0.0)
    assert photo_calls == []
    make_randomised(6, seed=1, levels=1.0, photos=1.0)
    assert len(photo_calls) == 6


def test_stage_two_is_the_curriculum_and_stage_three_draws_the_whole_pool() -> None:
    steps, batch, pool = 1000, 32, 6000
    assert [STAGES[2].window(s, steps, batch, pool) for s in (0, 300, 999)] == [
        curriculum_window(s, steps, batch, pool) for s in (0, 300, 999)
    ]
    first, last = curriculum_window(0, steps, batch, pool), curriculum_window(999, steps, batch, pool)
    assert first[0] == batch // 2 and last[0] == round(batch * 0.2)  # half classic at first, a fifth at the end
    assert first[1] == 0 and last[2] == pool and last[1] > first[1]  # the window moves up the pool
    assert {STAGES[3].window(s, steps, batch, pool) for s in (0, 500, 999)} == {(4, 0, pool)}
    assert "photos=0.5" in STAGES[3].describe(pool, 0, batch)
    assert STAGES[2].describe(pool, 0, batch) != STAGES[3].describe(pool, 0, batch)


def test_stage_three_pool_is_harder_and_half_on_photographs(photo_calls: list) -> None:
    scenes = STAGES[3].pool(40, 0, (128, 128), workers=1)
    assert len(scenes) == 40 and 10 <= len(photo_calls) <= 30  # about half of 40


def test_patches_change_only_the_share_asked_for(patch_calls: list) -> None:
    """``patches=0`` draws nothing more from a scene's generator (stages 2 and 3 stay what they were);
    ``patches=1`` puts one to four on every scene."""
    plain = make_randomised(6, seed=1, levels=1.0)
    assert patch_calls == []
    assert all(_same(a, b) for a, b in zip(plain, make_randomised(6, seed=1, levels=1.0, patches=0.0), strict=True))
    with_patches = make_randomised(6, seed=1, levels=1.0, patches=1.0)
    assert len(patch_calls) == 6 and all(1 <= len(polygons) <= 4 for polygons in patch_calls)
    assert not any(np.array_equal(a.image, b.image) for a, b in zip(plain, with_patches, strict=True))


def _box_fill(scenes) -> np.ndarray:
    """Each shape's share of its box's pixels."""
    return np.array([
        (s.mask[int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))] == k).sum() / ((x2 - x1) * (y2 - y1))
        for s in scenes for (x1, y1, x2, y2), k in zip(s.boxes, s.labels, strict=True)
    ])  # fmt: skip


def test_faint_changes_only_the_share_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """``faint=0`` draws nothing more from a scene's generator (the pools of stages 2 to 7, and so the weights they
    train, stay what they were); ``faint=1`` draws every shape close to its surroundings' colour, half of them
    outlined (the stage-8 pool's hard shapes), where the others are mostly filled and far from it."""
    needs: list[float] = []
    original = shapes_randomised._contrasting
    monkeypatch.setattr(
        shapes_randomised, "_contrasting", lambda rng, local, need: needs.append(need) or original(rng, local, need)
    )
    plain = make_randomised(12, seed=1, levels=1.0)
    assert all(_same(a, b) for a, b in zip(plain, make_randomised(12, seed=1, levels=1.0, faint=0.0), strict=True))
    plain_needs, needs[:] = np.array(needs), []
    faint = make_randomised(12, seed=1, levels=1.0, faint=1.0)
    faint_needs = np.array(needs)
    low, high = shapes_randomised.FAINT["contrast"]
    assert len(faint_needs) >= 12 and ((faint_needs >= low) & (faint_needs <= high)).all()
    assert (plain_needs > high).mean() > 0.6
    assert np.mean(_box_fill(faint) < 0.3) > np.mean(_box_fill(plain) < 0.3) + 0.15  # thin strokes fill little of a box


def test_patches_are_polygons_of_five_corners_or_more() -> None:
    """The patches teach that a flat area with straight edges is not a shape by itself, so they must not be one:
    five to seven corners, and in all but a few of them at least five of those turn the outline by 15° or more
    (a corner that turns less reads as a straight side: such a patch looks four-cornered)."""
    recording = _Recording()
    for i in range(300):
        shapes_randomised._patches(np.random.default_rng(i), recording, 128, 160, 128)
    turns = []
    for corners in map(np.asarray, recording.polygons):
        assert 5 <= len(corners) <= 7
        before, after = np.roll(corners, 1, 0) - corners, np.roll(corners, -1, 0) - corners
        cosine = (before * after).sum(1) / (np.linalg.norm(before, axis=1) * np.linalg.norm(after, axis=1))
        turns.append(180 - np.degrees(np.arccos(np.clip(cosine, -1, 1))))
    clear_corners = np.array([(t >= 15).sum() for t in turns])
    assert (clear_corners >= 5).mean() >= 0.85 and (clear_corners <= 3).mean() <= 0.01


def test_stage_four_pool_has_patches_and_some_photographs(photo_calls: list, patch_calls: list) -> None:
    scenes = STAGES[4].pool(40, 0, (128, 128), workers=1)
    assert len(scenes) == 40 and 14 <= len(patch_calls) <= 34 and 4 <= len(photo_calls) <= 22  # 60 % and 30 %
    assert "patches=0.6" in STAGES[4].describe(6000, 0, 16) and STAGES[4].window(0, 10, 16, 6000) == (2, 0, 6000)


@pytest.mark.parametrize("later", [5, 6, 7, 8])
def test_stages_five_to_eight_are_stage_four_on_other_scenes(later: int) -> None:
    """Stages 5 to 7 draw stage 4's kind of scene on other seeds; stage 8 the same with half its shapes faint."""
    four, other = STAGES[4], STAGES[later]
    assert (other.lowest_level, other.photos, other.patches, other.classic_share) == (
        four.lowest_level, four.photos, four.patches, four.classic_share
    )  # fmt: skip
    assert other.faint == (0.5 if later == 8 else 0.0) and four.faint == 0.0
    pools = [STAGES[k].pool(6, 0, (128, 128), workers=1) for k in (4, 5, 6, 7, 8)]
    mine = pools[later - 4]
    for k, pool in zip((4, 5, 6, 7, 8), pools, strict=True):
        if k != later:
            assert not any(np.array_equal(x.image, y.image) for x, y in zip(mine, pool, strict=True))
    assert four.describe(6000, 0, 16) != other.describe(6000, 0, 16)


def test_a_training_run_has_one_thread_and_gives_the_machine_its_threads_back() -> None:
    import torch
    from cnnserve.export.demos.shapes_eval import training_run

    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="stop"), training_run(7, None) as (clock, workers):
        assert torch.get_num_threads() == 1 and 1 <= workers <= 4
        first = torch.rand(3)
        assert clock().endswith(" s") and clock.seconds() >= 0
        raise RuntimeError("stop")
    assert torch.get_num_threads() == before
    with training_run(7, 3) as (_, workers):
        assert workers == 3 and torch.equal(torch.rand(3), first)  # torch's seed is the run's


def test_the_trainers_watch_other_scenes_than_the_test_sets() -> None:
    watched = watch_sets((128, 128), n=5)
    assert set(watched) == {"classic", "randomised", "held_out"}
    for name, scenes in watched.items():
        tested = test_set(name, 5)
        assert len(scenes) == 5 and not any(np.array_equal(s.image, t.image) for s in scenes for t in tested), name


def test_later_stages_run_after_the_last_stage_done_and_keep_the_records_of_the_others() -> None:
    ran = []

    def run(stage: int, length: StageLength) -> str:
        ran.append((stage, length.steps))
        return f"stage {stage} ran"

    lengths = {3: StageLength(steps=30, pool=6, lr=1e-3), 4: StageLength(steps=40, pool=6, lr=1e-3)}
    assert later_stages({}, lengths, run) == {"stage3": "stage 3 ran", "stage4": "stage 4 ran"}
    assert ran == [(3, 30), (4, 40)]
    ran.clear()  # resumed after stage 2 (its record says stage 3 was left out): stages 3 and 4 run
    done = {"stage1": "one", "stage2": "two", "stage3": "none"}
    assert later_stages(done, lengths, run) == {"stage3": "stage 3 ran", "stage4": "stage 4 ran"}
    ran.clear()  # resumed after stage 3: only stage 4 runs, stage 3's record is kept
    done = {"stage1": "one", "stage2": "two", "stage3": "three"}
    assert later_stages(done, lengths, run) == {"stage3": "three", "stage4": "stage 4 ran"} and ran == [(4, 40)]
    ran.clear()  # 0 steps leaves a stage out
    off = {3: StageLength(steps=0, pool=6, lr=1e-3), 4: lengths[4]}
    assert later_stages({}, off, run) == {"stage3": "none", "stage4": "stage 4 ran"} and ran == [(4, 40)]
