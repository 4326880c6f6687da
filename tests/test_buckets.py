"""One input shape per CUDA session (service/runtime/model.py), checked on the CPU with spy sessions: every session
sees one shape only, a batch goes to the smallest bucket that holds it, padded rows never reach an answer, and
the CPU plan (one session, any shape) is what it says. The buckets themselves come from the model's curve."""

from __future__ import annotations

import asyncio
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from cnnserve.service.contract import ModelContract, TensorInfo
from cnnserve.service.runtime.model import ExecutionPlan, ModelInfo, OnnxModel
from cnnserve.service.runtime.policy import BatchPolicy, choose_buckets, with_buckets
from cnnserve.service.runtime.runner import LocalRunner


class SpySession:
    """Stands in for an onnxruntime session: records every input shape it runs, and answers each row with its
    own first pixel (so a padded row — all zeros — or a row from another image would show in the answer)."""

    def __init__(self, log: list[SpySession]) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self.lock = threading.Lock()
        log.append(self)

    def run(self, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        images = feed["images"]
        with self.lock:
            self.shapes.append(images.shape)
        first = images.reshape(len(images), -1)[:, :1].astype(np.float32)
        return [np.repeat(first, 3, axis=1)]


def _model(plan: ExecutionPlan) -> tuple[OnnxModel, list[SpySession]]:
    sessions: list[SpySession] = []
    contract = ModelContract(name="spy", task="classification", input_size=(2, 2), in_channels=1, num_classes=3)
    info = ModelInfo(
        name="spy",
        contract=contract,
        inputs=(TensorInfo(name="images", type="tensor(float)", shape=("batch", 1, 2, 2)),),
        outputs=(TensorInfo(name="probabilities", type="tensor(float)", shape=("batch", 3)),),
        providers=("CPUExecutionProvider",),
        ready=True,
        batching=BatchPolicy(max_batch_size=16, source="setting", shed_after_ms=10_000),
    )
    model = OnnxModel(info, None, make_session=lambda: SpySession(sessions), plan=plan)
    return model, sessions


def _images(values: list[int]) -> np.ndarray:
    return np.stack([np.full((1, 2, 2), v, dtype=np.uint8) for v in values])


def test_no_session_sees_two_shapes_and_the_bucket_is_the_smallest_that_fits() -> None:
    model, sessions = _model(ExecutionPlan(buckets=(1, 4, 16), sessions=2))
    assert len(sessions) == 6  # 3 buckets × 2 runs in flight
    sizes = [random.Random(i).randint(1, 16) for i in range(200)]

    def run(n: int) -> tuple[int, np.ndarray]:
        return n, model.run(_images(list(range(1, n + 1))))["probabilities"]

    with ThreadPoolExecutor(8) as pool:  # runs overlap: two per bucket at a time
        results = list(pool.map(run, sizes))
    for session in sessions:
        assert len(set(session.shapes)) <= 1, session.shapes
    seen = {s.shapes[0][0] for s in sessions if s.shapes}
    assert seen == {1, 4, 16}
    counts = {bucket: sum(len(s.shapes) for s in sessions if s.shapes and s.shapes[0][0] == bucket) for bucket in seen}
    assert counts[1] == sizes.count(1)
    assert counts[4] == sum(1 for n in sizes if 2 <= n <= 4)
    assert counts[16] == sum(1 for n in sizes if n > 4)
    # padded rows never reach an answer: exactly n rows, each the image's own value
    for n, probabilities in results:
        assert probabilities.shape == (n, 3)
        np.testing.assert_array_equal(probabilities[:, 0] * 255, np.arange(1, n + 1))


def test_batches_past_the_largest_bucket_are_split_and_trimmed() -> None:
    model, sessions = _model(ExecutionPlan(buckets=(1, 16), sessions=1))
    feed = {"images": _images([v % 250 + 1 for v in range(40)]).astype(np.float32)}
    (out,) = model.run_graph(["probabilities"], feed)
    assert out.shape == (40, 3)
    np.testing.assert_array_equal(out[:, 0], feed["images"][:, 0, 0, 0])
    assert {shape[0] for s in sessions for shape in s.shapes} == {16}  # 16 + 16 + 8 padded to 16


def test_the_cpu_plan_is_one_session_of_any_shape_without_padding() -> None:
    model, sessions = _model(ExecutionPlan())
    for n in (3, 1, 7, 16):
        assert model.run(_images([5] * n))["probabilities"].shape == (n, 3)
    (session,) = sessions
    assert [shape[0] for shape in session.shapes] == [3, 1, 7, 16]


def test_concurrent_requests_through_the_runner_keep_one_shape_per_session() -> None:
    model, sessions = _model(ExecutionPlan(buckets=(1, 4, 16), sessions=2))
    runner = LocalRunner(model, max_inflight=2)

    async def main() -> list[np.ndarray]:
        calls = [runner.infer(_images([i % 200 + 1]), {}) for i in range(100)]
        return [out["probabilities"] for out in await asyncio.gather(*calls)]

    answers = asyncio.run(main())
    runner.close()
    for i, answer in enumerate(answers):
        assert answer.shape == (1, 3) and answer[0, 0] * 255 == pytest.approx(i % 200 + 1)
    assert all(len(set(s.shapes)) <= 1 for s in sessions)


GPU_CURVE = [(1, 1.0), (2, 1.05), (4, 1.1), (8, 1.3), (16, 1.9), (32, 3.1), (64, 5.6), (128, 10.8)]


def test_buckets_follow_the_curve() -> None:
    # padding a small batch up to the bucket above must not cost more than 1.5× its own run
    assert choose_buckets(128, GPU_CURVE) == (1, 4, 16, 32, 64, 128)  # 8 pads to 16 at 1.46×: no bucket
    flat = [(b, 1.0 + 0.002 * b) for b in (1, 2, 4, 8, 16, 32, 64)]  # launch-bound: one bucket does for all
    assert choose_buckets(64, flat) == (1, 64)
    assert choose_buckets(64, []) == (1, 4, 16, 64)  # nothing measured: every fourth power of two
    assert choose_buckets(1, []) == (1,)


def test_the_plan_is_explicit_per_provider_and_setting() -> None:
    policy = BatchPolicy(max_batch_size=64, source="built-in", shed_after_ms=1000, curve=GPU_CURVE[:7])
    cpu = with_buckets(policy, on_cuda=False, setting="", inflight=1)
    assert cpu.buckets is None and cpu.sessions == 1
    cuda = with_buckets(policy, on_cuda=True, setting="", inflight=2)
    assert cuda.buckets == [1, 4, 16, 32, 64] and cuda.sessions == 10
    assert with_buckets(policy, on_cuda=True, setting="none", inflight=2).buckets is None
    named = with_buckets(policy, on_cuda=False, setting="1,8,32,128", inflight=1)
    assert named.buckets == [1, 8, 32, 64]  # the limit is always the largest
