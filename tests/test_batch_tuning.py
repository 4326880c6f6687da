"""Batch policies from measured curves (service/runtime/policy.py): the rule, the measuring loop, where a limit
comes from, the CUDA buckets, and that the service and `cnnserve tune` use them for real."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cnnserve.service.runtime.model import load_model
from cnnserve.service.runtime.policy import (
    BatchPolicy,
    ProfileStore,
    choose_batch_limit,
    load_family_defaults,
    measure_curve,
    profile_entry,
    resolve_batch_policy,
)
from cnnserve.service.runtime.tuning import policy_for_model, tune_model
from cnnserve.service.settings import Settings

CPU = {"provider": "CPUExecutionProvider", "device": "Test CPU", "threads": 2}
CUDA = {"provider": "CUDAExecutionProvider", "device": "Test GPU", "threads": 16}
RESNET = {"name": "resnet50", "family": "resnet"}


def test_flat_curve_keeps_batches_small() -> None:
    # ResNet-50 fp32 on 2 cores: no throughput to win, so no batch worth the wait
    curve = [(1, 38.7), (2, 75.4), (4, 150.2), (8, 301.9)]
    assert choose_batch_limit(curve, budget_ms=1000, tolerance=0.97) == 1


def test_rising_curve_takes_the_knee_within_the_budget() -> None:
    # a GPU-like curve: throughput grows until batch 64, then flattens
    curve = [(1, 1.0), (2, 1.1), (4, 1.3), (8, 1.8), (16, 2.9), (32, 5.0), (64, 9.0), (128, 17.8), (256, 35.0)]
    assert choose_batch_limit(curve, budget_ms=100, tolerance=0.97) == 64  # 7,111/s; 128 gives 7,191/s: < 3 % more
    assert choose_batch_limit(curve, budget_ms=100, tolerance=1.0) == 256
    assert choose_batch_limit(curve, budget_ms=6, tolerance=0.97) == 32  # 64 would run past the budget
    assert choose_batch_limit([(1, 250.0), (2, 490.0)], budget_ms=100) == 1  # even one image misses the budget
    with pytest.raises(ValueError):
        choose_batch_limit([], budget_ms=100)


class _Clock:
    """A fake ``perf_counter`` that a fake model advances by its cost: measurements without timing noise."""

    def __init__(self, cost) -> None:
        self.now, self.cost, self.calls = 0.0, cost, []

    def __call__(self) -> float:
        return self.now

    def run(self, x: np.ndarray) -> None:
        self.calls.append(len(x))
        self.now += self.cost(len(x))


def test_measuring_stops_at_the_budget_and_on_a_plateau(monkeypatch) -> None:
    import cnnserve.service.runtime.policy as tuning

    flat = _Clock(lambda b: 0.002 * b)  # 2 ms per image: every batch size has the same throughput
    monkeypatch.setattr(tuning.time, "perf_counter", flat)
    curve = measure_curve(flat.run, lambda b: np.zeros((b, 1)), budget_ms=1000, min_seconds=0.0, min_runs=2)
    assert curve == [(1, pytest.approx(2.0)), (2, pytest.approx(4.0)), (4, pytest.approx(8.0))]  # flat twice: stop
    assert flat.calls == [1, 1, 1, 2, 2, 2, 4, 4, 4]  # one untimed run per size, then the timed ones

    paying = _Clock(lambda b: 0.010 + 0.0005 * b)  # 10 ms per call + 0.5 ms per image: batching pays
    monkeypatch.setattr(tuning.time, "perf_counter", paying)
    curve = measure_curve(paying.run, lambda b: np.zeros((b, 1)), budget_ms=30, min_seconds=0.0, min_runs=2)
    assert [b for b, _ in curve] == [1, 2, 4, 8, 16, 32, 64]
    assert curve[-1][1] == pytest.approx(42.0)  # the first size past the budget is kept, and ends the curve
    assert choose_batch_limit(curve, budget_ms=30, tolerance=0.97) == 32

    slow = _Clock(lambda b: 0.5 * b)  # far past the budget: one timed run, not min_runs
    monkeypatch.setattr(tuning.time, "perf_counter", slow)
    assert measure_curve(slow.run, lambda b: np.zeros((b, 1)), budget_ms=100, min_runs=3) == [(1, 500.0)]
    assert slow.calls == [1, 1]


def test_profiles_round_trip_and_a_damaged_file_is_ignored(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "batching.json")
    assert store.lookup("abc", CPU) is None
    store.save(profile_entry(sha256="abc", model="m", identity=CPU, curve=[(1, 5.0), (2, 6.0)], budget_ms=100))
    store.save(profile_entry(sha256="abc", model="m", identity=CUDA, curve=[(1, 1.0)], budget_ms=100))
    store.save(profile_entry(sha256="abc", model="m", identity=CPU, curve=[(1, 4.0)], budget_ms=100))  # replaces
    assert store.lookup("abc", CPU)["curve"] == [[1, 4.0]]
    assert store.lookup("abc", CUDA)["curve"] == [[1, 1.0]]
    assert store.lookup("abc", {**CPU, "threads": 1}) is None  # other threads, other curve
    assert len(json.loads(store.path.read_text())["profiles"]) == 2
    store.path.write_text("{not json")
    assert store.lookup("abc", CPU) is None


def _resolve(tmp_path: Path, **overrides) -> BatchPolicy:
    args = {
        **RESNET,
        "precision": "fp32",
        "sha256": "file-hash",
        "identity": CPU,
        "setting": None,
        "budget_ms": 100.0,
        "tolerance": 0.97,
        "max_latency_ms": 10_000,
        "profiles": ProfileStore(tmp_path / "batching.json"),
        "family_defaults": [
            {"family": "resnet", "model": "resnet50", "precision": "fp32", **CPU, "curve": [[1, 40.0], [2, 60.0]]},
            {"family": "resnet", "model": "resnet50", "precision": "int8", **CPU, "curve": [[1, 10], [2, 20]]},
            {"family": "resnet", "model": "resnet50", "precision": "fp16", **CUDA, "curve": [[1, 1.0], [64, 6.0]]},
        ],
    }
    return resolve_batch_policy(**{**args, **overrides})


def test_where_a_limit_comes_from(tmp_path: Path) -> None:
    family = _resolve(tmp_path)
    assert (family.source, family.max_batch_size, family.reference) == ("family default", 2, "resnet50 fp32")
    assert family.measured_on == "Test CPU, 2 threads"
    assert _resolve(tmp_path, precision="int8").max_batch_size == 1  # the int8 entry, not the fp32 one
    assert _resolve(tmp_path, name="resnet152", family="resnet").reference == "resnet50 fp32"
    assert _resolve(tmp_path, identity=CUDA, precision="fp16").max_batch_size == 64
    built_in = _resolve(tmp_path, name="lenet5", family="lenet")
    assert (built_in.source, built_in.max_batch_size) == ("built-in", 16)
    assert _resolve(tmp_path, identity=CUDA, precision="int8").source == "built-in"  # no CUDA int8/fp32 entry

    ProfileStore(tmp_path / "batching.json").save(
        profile_entry(sha256="file-hash", model="r", identity=CPU, curve=[(1, 30.0), (2, 31.0), (4, 33.0)], budget_ms=1)
    )
    measured = _resolve(tmp_path)
    assert (measured.source, measured.max_batch_size, measured.batch_ms) == ("measured", 4, 33.0)
    assert _resolve(tmp_path, budget_ms=32.0).max_batch_size == 2  # the stored curve, re-read with a new budget
    assert _resolve(tmp_path, sha256="other-file").source == "family default"
    setting = _resolve(tmp_path, setting=8)
    assert (setting.source, setting.max_batch_size) == ("setting", 8)


def test_a_slow_model_is_not_shed_before_a_few_runs(tmp_path: Path) -> None:
    rcnn = _resolve(
        tmp_path,
        name="fasterrcnn_resnet50_fpn",
        family="rcnn",
        family_defaults=[{"family": "rcnn", "model": "x", "precision": "fp32", **CPU, "curve": [[1, 5200.0]]}],
    )
    assert rcnn.max_batch_size == 1 and rcnn.shed_after_ms == 4 * 5200.0
    assert _resolve(tmp_path).shed_after_ms == 10_000  # a fast one keeps the configured deadline


def test_explicit_settings_win(monkeypatch) -> None:
    assert Settings(tiers="one").batch_limit_setting() is None
    assert Settings(tiers="one", max_batch_size=4).batch_limit_setting() == 4
    assert Settings(tiers="two", max_batch_size=4).batch_limit_setting() is None  # per API-worker call only
    assert Settings(tiers="two", model_max_batch_size=32).batch_limit_setting() == 32
    monkeypatch.setenv("CNNSERVE_MAX_BATCH_SIZE", "8")
    assert Settings(tiers="one").batch_limit_setting() == 8


def test_shipped_family_defaults_cover_every_family_on_cpu() -> None:
    from cnnserve.models import list_models
    from cnnserve.models.registry import get_spec

    entries = load_family_defaults()
    cpu = {e["family"] for e in entries if e["provider"] == "CPUExecutionProvider"}
    assert {get_spec(n).family for n in list_models()} <= cpu
    for entry in entries:
        sizes = [b for b, _ in entry["curve"]]
        assert sizes == sorted(sizes) and sizes[0] == 1 and all(ms > 0 for _, ms in entry["curve"])


@pytest.fixture(scope="module")
def lenet_file(tmp_path_factory) -> Path:
    from cnnserve.export import export_model

    path = tmp_path_factory.mktemp("tune") / "lenet5.onnx"
    export_model("lenet5", weights="random", output=path, save=False)
    return path


def test_tuning_a_real_model_and_the_service_using_it(lenet_file: Path, tmp_path: Path) -> None:
    settings = Settings(tiers="one", batch_profiles=str(tmp_path / "batching.json"))
    model = load_model("lenet5", lenet_file, providers=["CPUExecutionProvider"])
    before = policy_for_model(model, settings)
    assert before.source == "family default" and before.reference == "lenet5 fp32"

    entry = tune_model(model, settings)
    sizes = [b for b, _ in entry["curve"]]
    assert sizes[0] == 1 and len(sizes) >= 3 and entry["family"] == "lenet"
    after = policy_for_model(model, settings)
    assert after.source == "measured" and after.max_batch_size > 1  # LeNet-5 runs far more images/s in batches
    assert after.measured_on.endswith("threads") and after.model_dump(mode="json")["curve"][0]["batch"] == 1

    # tune at start: a model with no curve here is measured while the service loads it
    fresh = Settings(tiers="one", batch_profiles=str(tmp_path / "other.json"), tune_at_start=True)
    assert policy_for_model(model, fresh).source == "measured"
    assert (tmp_path / "other.json").is_file()
