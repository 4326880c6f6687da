"""The tiers' socket (service/runtime/tier.py): calls and replies cross intact and in any order, arrays arrive as
they left, errors keep their status, a broken frame or a lost connection ends in a 503 (never a hang), and the
next call connects again."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import numpy as np
import pytest
from cnnserve.service.errors import ModelNotFound, ModelUnavailable, ServeError
from cnnserve.service.runtime.tier import TierClient, TierServer


class EchoRunner:
    """Answers each image with its own first pixel, after a delay that depends on the image (so replies overtake
    one another), and fails on request."""

    async def infer(self, images: np.ndarray, extra: dict, rows: dict | None = None) -> dict[str, np.ndarray]:
        if extra.get("fail"):
            raise ServeError("refused on purpose", status=413)
        await asyncio.sleep(float(images[0, 0, 0, 0]) / 2000)
        return {"first": images.reshape(len(images), -1)[:, 0].astype(np.float32), "shape": np.array(images.shape)}

    async def run_graph(self, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [feed[name] * 2 for name in names]


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_calls_round_trip_in_any_order_with_their_arrays_and_errors(tmp_path: Path) -> None:
    seen: list[tuple[str, float, int]] = []

    def observe(side: str, seconds: float, calls: int = 0) -> None:
        seen.append((side, seconds, calls))

    async def main() -> None:
        server = TierServer({"m": EchoRunner()}, str(tmp_path / "tier.sock"), observe)
        await server.start()
        client = TierClient(str(tmp_path / "tier.sock"), observe)
        images = [np.full((n, 3, 8, 8), 40 - n, dtype=np.uint8) for n in range(1, 30)]
        answers = await asyncio.gather(*(client.call("infer", "m", x, {}) for x in images))
        for x, answer in zip(images, answers, strict=True):
            np.testing.assert_array_equal(answer["first"], np.full(len(x), 40 - len(x), np.float32))
            assert answer["shape"].tolist() == list(x.shape)
        big = np.random.default_rng(0).integers(0, 255, (64, 3, 224, 224), dtype=np.uint8)  # 9.6 MB in one frame
        out = await client.call("infer", "m", big, {})
        np.testing.assert_array_equal(out["first"], big.reshape(64, -1)[:, 0])
        (doubled,) = await client.call("run_graph", "m", ["x"], {"x": np.arange(5.0)})
        assert doubled.tolist() == [0.0, 2.0, 4.0, 6.0, 8.0]
        with pytest.raises(ServeError) as refused:
            await client.call("infer", "m", images[0], {"fail": 1})
        assert refused.value.status == 413 and "on purpose" in refused.value.message
        with pytest.raises(ServeError) as unknown:  # the status crosses, the message too
            await client.call("infer", "nope", images[0], {})
        assert unknown.value.status == ModelNotFound.status and "nope" in unknown.value.message
        client.close()
        await server.close()

    _run(main())
    assert {side for side, _, _ in seen} == {"api", "model"}
    assert sum(calls for side, _, calls in seen if side == "model") == 33  # every call answered once
    assert all(seconds >= 0 for _, seconds, _ in seen)


def test_a_lost_model_tier_fails_calls_with_503_and_the_next_call_reconnects(tmp_path: Path) -> None:
    path = str(tmp_path / "tier.sock")

    async def main() -> None:
        client = TierClient(path)
        with pytest.raises(ModelUnavailable):  # nobody listening yet
            await client.call("infer", "m", np.zeros((1, 1, 1, 1), np.uint8), {})
        server = TierServer({"m": EchoRunner()}, path)
        await server.start()
        slow = asyncio.ensure_future(client.call("infer", "m", np.full((1, 1, 1, 1), 250, np.uint8), {}))
        await asyncio.sleep(0.02)
        await server.close()
        client._transport.abort()  # the connection goes away under the call in flight
        with pytest.raises(ModelUnavailable):
            await slow
        server = TierServer({"m": EchoRunner()}, path)
        await server.start()
        answer = await client.call("infer", "m", np.full((2, 1, 1, 1), 7, np.uint8), {})
        assert answer["first"].tolist() == [7.0, 7.0]
        client.close()
        await server.close()

    _run(main())


def test_a_bad_frame_closes_that_connection_only(tmp_path: Path) -> None:
    path = str(tmp_path / "tier.sock")

    async def main() -> None:
        server = TierServer({"m": EchoRunner()}, path)
        await server.start()
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(struct.pack("<IIBIH", 1 << 31 | 5, 1, 1, 0, 0))  # claims a frame past the limit
        assert await reader.read() == b""  # closed by the server
        client = TierClient(path)
        answer = await client.call("infer", "m", np.full((1, 1, 1, 1), 3, np.uint8), {})
        assert answer["first"].tolist() == [3.0]
        client.close()
        await server.close()

    _run(main())
