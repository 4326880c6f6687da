"""The batcher on its own: batches form while a run is in flight, each job gets its own rows, errors and the
latency budget reach every caller."""

from __future__ import annotations

import asyncio

import numpy as np
from cnnserve.service.errors import ModelUnavailable, ServeError
from cnnserve.service.runtime.batching import ModelBatcher


def _runner(calls: list[int], delay: float = 0.02, fail: Exception | None = None):
    async def run(batch: np.ndarray, extra: dict[str, float], rows: dict) -> dict[str, np.ndarray]:
        calls.append(len(batch))
        await asyncio.sleep(delay)
        if fail is not None:
            raise fail
        # row i answers the image's own value plus the scalar input: any mix-up of rows shows
        return {"out": batch.reshape(len(batch), -1)[:, 0].astype(np.float32) + extra.get("t", 0.0)}

    return run


def _image(value: int, size: int = 2) -> np.ndarray:
    return np.full((1, size, size), value, dtype=np.uint8)


def test_one_caller_runs_at_once_and_concurrent_callers_share_runs() -> None:
    calls: list[int] = []

    async def main() -> None:
        batcher = ModelBatcher("m", _runner(calls), max_batch_size=8, max_latency_ms=5000)
        single = await batcher.infer_one(_image(7))
        assert single["out"] == 7.0 and calls == [1]
        answers = await asyncio.gather(*(batcher.infer_one(_image(i)) for i in range(20)))
        assert [float(a["out"]) for a in answers] == list(range(20))

    asyncio.run(main())
    assert sum(calls) == 21 and len(calls) < 21 and max(calls) <= 8  # batches formed, none over the limit


def test_inflight_limit_and_multi_image_jobs() -> None:
    calls: list[int] = []
    running, peak = 0, 0

    async def run(batch: np.ndarray, extra: dict[str, float], rows: dict) -> dict[str, np.ndarray]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        calls.append(len(batch))
        await asyncio.sleep(0.02)
        running -= 1
        return {"out": batch.reshape(len(batch), -1)[:, 0].astype(np.float32)}

    async def main() -> None:
        batcher = ModelBatcher("m", run, max_batch_size=4, max_latency_ms=5000, max_inflight=2)
        jobs = [np.stack([_image(10 * i + k) for k in range(3)]) for i in range(6)]  # 3 images each
        answers = await asyncio.gather(*(batcher.infer(job) for job in jobs))
        for i, answer in enumerate(answers):
            assert answer["out"].tolist() == [10 * i, 10 * i + 1, 10 * i + 2]
        big = await batcher.infer(np.stack([_image(k) for k in range(10)]))  # larger than a batch: split
        assert big["out"].tolist() == list(range(10))

    asyncio.run(main())
    assert peak == 2 and max(calls) <= 4


def test_jobs_with_different_inputs_never_share_a_run() -> None:
    calls: list[int] = []

    async def main() -> None:
        batcher = ModelBatcher("m", _runner(calls), max_batch_size=16, max_latency_ms=5000)
        tasks = [batcher.infer_one(_image(1), t=float(i % 2)) for i in range(8)]
        tasks += [batcher.infer_one(_image(1, size=3)) for _ in range(4)]
        answers = await asyncio.gather(*tasks)
        assert [float(a["out"]) for a in answers[:8]] == [1.0 + (i % 2) for i in range(8)]

    asyncio.run(main())
    assert sum(calls) == 12


def test_errors_reach_every_job_of_the_batch_with_their_status() -> None:
    calls: list[int] = []

    async def main() -> None:
        batcher = ModelBatcher(
            "m", _runner(calls, fail=ServeError("tier says no", status=503)), max_batch_size=8, max_latency_ms=5000
        )
        results = await asyncio.gather(*(batcher.infer_one(_image(i)) for i in range(5)), return_exceptions=True)
        assert all(isinstance(r, ServeError) and r.status == 503 for r in results)

    asyncio.run(main())


def test_jobs_past_the_latency_budget_are_shed_with_503() -> None:
    calls: list[int] = []

    async def main() -> None:
        batcher = ModelBatcher("m", _runner(calls, delay=0.2), max_batch_size=1, max_latency_ms=50)
        results = await asyncio.gather(*(batcher.infer_one(_image(i)) for i in range(4)), return_exceptions=True)
        assert not isinstance(results[0], Exception)  # the first ran at once
        shed = [r for r in results if isinstance(r, ModelUnavailable)]
        assert shed and all(r.status == 503 and "overloaded" in r.message for r in shed)

    asyncio.run(main())


def test_further_per_row_inputs_travel_with_their_images() -> None:
    """An inpainting mask rides in the same run as its image, cut the same way; jobs whose masks differ in shape
    never share a run, and a job larger than a batch is split with its mask."""
    calls: list[int] = []

    async def run(batch: np.ndarray, extra: dict[str, float], rows: dict) -> dict[str, np.ndarray]:
        calls.append(len(batch))
        await asyncio.sleep(0.02)
        mask = rows["mask"].reshape(len(batch), -1)[:, 0]
        return {"out": batch.reshape(len(batch), -1)[:, 0].astype(np.float32) * 1000 + mask}

    async def main() -> None:
        batcher = ModelBatcher("m", run, max_batch_size=4, max_latency_ms=5000)
        jobs = [batcher.infer(_image(i)[None], {"mask": np.full((1, 1, 2, 2), i + 0.5, np.float32)}) for i in range(6)]
        answers = await asyncio.gather(*jobs)
        assert [float(a["out"][0]) for a in answers] == [1000 * i + i + 0.5 for i in range(6)]
        big = await batcher.infer(
            np.stack([_image(k) for k in range(7)]), {"mask": np.arange(7, dtype=np.float32).reshape(7, 1, 1, 1)}
        )
        assert big["out"].tolist() == [1000 * k + k for k in range(7)]
        calls.clear()
        shapes = [(2, 2), (2, 2), (3, 3), (2, 2), (3, 3)]
        await asyncio.gather(
            *(batcher.infer(_image(1)[None], {"mask": np.zeros((1, 1, *shape), np.float32)}) for shape in shapes)
        )
        assert sorted(calls) == [1, 2, 2]  # the first alone, then the 2×2 masks together and the 3×3 ones together

    asyncio.run(main())
    assert max(calls) <= 4
