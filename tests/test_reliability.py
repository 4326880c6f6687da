"""Hostile input cannot exhaust memory, stall the worker or earn a 5xx (issue 20), against the real server.

One section per point of the issue: (1) bounded ``/v2`` bodies, (2) image work off the event loop within a memory
budget, (3) no 5xx for bad input and JSON errors everywhere, (4) typed options that take JSON booleans and numbers,
(5) metrics with bounded labels, (6) slow headers, repeated parts, base64 with line breaks, health bodies. Time and
memory bounds here are generous (the machine is shared); the measured figures are in benchmarks/reliability/.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import math
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
from cnnserve.export.demos.digits import digit_png, digits_split
from cnnserve.service.app.requests import json_depth, parse_json
from cnnserve.service.app.work import ImageWork, MemoryBudget
from cnnserve.service.errors import BadInput
from PIL import Image


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def digit() -> bytes:
    return digit_png(digits_split().test_images[0])


@pytest.fixture(scope="module")
def worker(server):
    """The server's one worker process (psutil), for its resident memory."""
    import psutil

    for child in psutil.Process(server.process.pid).children(recursive=True):
        if "_bentoml_impl.worker.service" in " ".join(child.cmdline()):
            return child
    raise AssertionError("no BentoML worker under the test server")


def _error(response: requests.Response) -> str:
    """The answer is JSON with a non-empty `error` (every error, whoever answers it)."""
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"} and body["error"], body
    return body["error"]


def _v2(server, model: str, body: bytes | dict, **headers: str) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(f"{server.url}/v2/models/{model}/infer", data=data, headers=headers, timeout=60)


def _binary_request(array: np.ndarray, tail: bytes = b"") -> tuple[bytes, dict[str, str]]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": list(array.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": array.nbytes},
                }
            ]
        }
    ).encode()
    return header + array.tobytes() + tail, {"Inference-Header-Content-Length": str(len(header))}


def _read_response(s: socket.socket) -> bytes:
    """One whole answer from a raw socket: its head, and its body by ``Content-Length`` (the server may write the
    two in separate packets)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    while length is not None and len(body) < int(length.group(1)):
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


# --- 1. /v2 bodies are bounded ------------------------------------------------------------------------------------


def test_a_v2_body_over_the_models_limit_is_refused_from_its_length(server) -> None:
    """LeNet-5's limit is a full batch of its input in binary FP32 plus 1 MB (about 1.5 MB here): a request that
    announces 128 MB of tensor is refused before any of it is sent, and a stdlib client that sends a whole 16 MB
    body before reading still reads the 413 (the refused body is drained)."""
    host, port = urlsplit(server.url).hostname, urlsplit(server.url).port
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(
            b"POST /v2/models/lenet5/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            b"Inference-Header-Content-Length: 2\r\nContent-Length: 134217728\r\n\r\n{}"
        )
        head = _read_response(s)
    assert head.startswith(b"HTTP/1.1 413") and b'"error"' in head

    request = urllib.request.Request(
        f"{server.url}/v2/models/lenet5/infer",
        data=b"\0" * (16 * 2**20),
        headers={"Inference-Header-Content-Length": "2", "Content-Type": "application/octet-stream"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 413
    assert "limit" in json.loads(refused.value.read())["error"]


def test_a_chunked_v2_body_is_stopped_at_the_limit(server) -> None:
    def chunks():
        yield b'{"inputs": ['
        for _ in range(64):
            yield b" " * 65536  # 4 MB of JSON whitespace, no Content-Length

    response = requests.post(f"{server.url}/v2/models/lenet5/infer", data=chunks(), timeout=60)
    assert response.status_code == 413
    assert "limit" in _error(response)


def test_bytes_after_the_declared_tensors_are_refused(server) -> None:
    ok_body, headers = _binary_request(np.zeros((1, 1, 32, 32), np.float32))
    assert _v2(server, "lenet5", ok_body, **headers).status_code == 200
    body, headers = _binary_request(np.zeros((1, 1, 32, 32), np.float32), tail=b"junk" * 1000)
    response = _v2(server, "lenet5", body, **headers)
    assert response.status_code == 400 and "after the declared" in _error(response)


def test_a_request_for_more_than_a_batch_of_elements_is_refused(server) -> None:
    big = {"inputs": [{"name": "images", "shape": [100_000, 1, 32, 32], "datatype": "FP32", "data": [0.0]}]}
    response = _v2(server, "lenet5", big)
    assert response.status_code == 413 and "elements" in _error(response)


def test_memory_returns_after_a_v2_request_at_the_limit(server, worker) -> None:
    batch = np.random.default_rng(0).random((128, 1, 32, 32), dtype=np.float32)
    body, headers = _binary_request(batch)
    for _ in range(3):  # the first runs size onnxruntime's arena for the batch; then it must stay put
        assert _v2(server, "lenet5", body, **headers).status_code == 200
    before = worker.memory_info().rss
    for _ in range(5):
        assert _v2(server, "lenet5", body, **headers).status_code == 200
    time.sleep(1)
    assert worker.memory_info().rss - before < 32 * 2**20


# --- 2. image work is off the event loop and within a memory budget --------------------------------------------------


def _large_zeros() -> bytes:
    """16,000,000 pixels of zeros (the default limit) in a small PNG."""
    return _png(Image.new("RGB", (4000, 4000)))


def test_livez_answers_while_large_uploads_are_worked_on(server) -> None:
    """Large uploads whose decoding, overlay and PNG encoding take seconds: /livez on the same worker keeps
    answering (before: stalled for seconds while one of them was decoded on the event loop)."""
    image = _large_zeros()
    statuses: list[int] = []

    def upload() -> None:
        r = requests.post(
            f"{server.url}/segment",
            files={"image": image},
            data={"model": "unet", "overlay": "true", "render": "true"},
            timeout=120,
        )
        statuses.append(r.status_code)

    threads = [threading.Thread(target=upload) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    latencies = []
    while any(t.is_alive() for t in threads):
        start = time.perf_counter()
        assert requests.get(f"{server.url}/livez", timeout=10).status_code == 200
        latencies.append(time.perf_counter() - start)
        time.sleep(0.05)
    for t in threads:
        t.join()
    assert set(statuses) <= {200, 503}, statuses  # 503: shed after waiting for memory; never a 500 or a 504
    assert 200 in statuses
    assert len(latencies) >= 5 and max(latencies) < 1.0, sorted(latencies)[-5:]


@pytest.mark.parametrize(
    ("name", "make", "route", "fields"),
    [
        ("zeros-overlay", _large_zeros, "/segment", {"model": "unet", "overlay": "true", "render": "true"}),
        (
            "16-bit",
            lambda: _png(Image.fromarray(np.tile(np.arange(4000, dtype=np.uint16) * 16, (4000, 1)))),
            "/denoise",
            {"model": "cae"},
        ),
    ],
)
def test_a_largest_upload_stays_far_below_a_gigabyte_and_its_memory_returns(
    server, worker, name, make, route, fields
) -> None:
    image = make()
    before = worker.memory_info().rss
    peak = [before]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], worker.memory_info().rss)
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        response = requests.post(f"{server.url}{route}", files={"image": image}, data=fields, timeout=120)
    finally:
        done.set()
        watcher.join()
    assert response.status_code == 200, response.text[:200]
    time.sleep(1.5)
    after = worker.memory_info().rss
    assert peak[0] < 2**30, f"peak RSS {peak[0] / 2**20:.0f} MB"
    assert peak[0] - before < 600 * 2**20, f"{name}: +{(peak[0] - before) / 2**20:.0f} MB"
    assert after - before < 48 * 2**20, f"{name}: {(after - before) / 2**20:.0f} MB not given back"


def test_the_memory_budget_is_first_come_first_served_and_lets_small_requests_pass() -> None:
    async def scenario() -> list[str]:
        budget = MemoryBudget(1024)
        order: list[str] = []
        big = await budget.reserve(900)

        async def take(name: str, nbytes: int) -> None:
            lease = await budget.reserve(nbytes)
            order.append(name)
            await asyncio.sleep(0.01)
            lease.release()

        waiting = [asyncio.create_task(take("second-big", 900)), asyncio.create_task(take("third-big", 500))]
        await asyncio.sleep(0.01)
        await take("small", 10)  # 10 ≤ 1024/64 and it fits: it does not wait behind the large ones
        assert budget.try_reserve(2000) is None  # clamped to 15/16 of the budget, but not free now
        big.release()
        await asyncio.gather(*waiting)
        assert budget.held == 0
        return order

    assert asyncio.run(scenario()) == ["small", "second-big", "third-big"]


def test_a_cancelled_wait_and_a_cancelled_job_give_their_memory_back() -> None:
    async def scenario() -> None:
        work = ImageWork(threads=1, body_bytes=1000, work_bytes=1000, wait_s=0.05)
        budget = work.work
        held = await budget.reserve(900)
        waiter = asyncio.create_task(budget.reserve(900))
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert budget.waiting == 0
        held.release()
        lease = await budget.reserve(900)
        gate = threading.Event()
        job = asyncio.create_task(work.run(gate.wait, 5, lease=lease))
        await asyncio.sleep(0.01)
        job.cancel()
        lease.release()  # the request is gone, but the job still uses the memory…
        assert budget.held == 900
        gate.set()
        for _ in range(100):  # …until it ends
            if budget.held == 0:
                break
            await asyncio.sleep(0.01)
        assert budget.held == 0
        work.close()

    asyncio.run(scenario())


# --- 3. no 5xx for bad input, and every error is JSON --------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "phrase"),
    [
        (b"[" * 10_000 + b"]" * 10_000, "nests"),
        (b'{"image": "", "top_k": ' + b"7" * 5000 + b"}", "digits"),
        (b'{"image": "' + b"A" * 100 + b'", "top_k": 1e400}', "top_k"),
        (b'{"image": 5}', "base64"),
        (b"{not json", "not valid JSON"),
        (b'"just a string"', "object"),
    ],
    ids=["deep", "long-integer", "infinite", "image-not-a-string", "broken", "not-an-object"],
)
def test_bad_json_bodies_are_400(server, body: bytes, phrase: str) -> None:
    response = requests.post(
        f"{server.url}/classify", data=body, headers={"Content-Type": "application/json"}, timeout=30
    )
    assert response.status_code == 400
    assert phrase.lower() in _error(response).lower()


def _v2_input(shape: list, data: object = None, **extra: object) -> dict:
    count = math.prod(d for d in shape if isinstance(d, int) and not isinstance(d, bool) and 0 < d < 10**6)
    item = {"name": "images", "shape": shape, "datatype": "FP32", "data": [0.0] * count if data is None else data}
    return {"inputs": [{**item, **extra}]}


V2_BAD = {
    "parameters-not-an-object": {**_v2_input([1, 1, 32, 32]), "parameters": 5},
    "input-parameters-a-list": _v2_input([1, 1, 32, 32], parameters=[1]),
    "batch-0": _v2_input([0, 1, 32, 32]),
    "negative-dimension": _v2_input([-1, 1, 32, 32]),
    "huge-integer": _v2_input([10**30, 1, 32, 32], data=[0.0]),
    "boolean-dimension": _v2_input([True, 1, 32, 32]),
    "float-dimension": _v2_input([1.0, 1, 32, 32]),
    "shape-not-a-list": _v2_input([1, 1, 32, 32]) | {"inputs": [{"name": "images", "shape": "1,1,32,32"}]},
    "datatype-unknown": {"inputs": [{"name": "images", "shape": [1], "datatype": "COMPLEX", "data": [0]}]},
    "name-not-a-string": {"inputs": [{"name": 7, "shape": [1, 1, 32, 32], "datatype": "FP32", "data": []}]},
    "data-strings": _v2_input([1, 1, 32, 32], data=["x"] * 1024),
    "data-ragged": _v2_input([1, 1, 32, 32], data=[[0.0] * 3, [0.0]]),
    "data-huge-integers": _v2_input([1, 1, 32, 32], data=[10**40] * 1024),
    "data-object": _v2_input([1, 1, 32, 32], data={"a": 1}),
    "binary-size-wrong-type": _v2_input([1, 1, 32, 32], parameters={"binary_data_size": "many"}),
    "binary-size-beyond-body": _v2_input([1, 1, 32, 32], parameters={"binary_data_size": 4096}),
    "inputs-not-a-list": {"inputs": {"name": "images"}},
    "input-twice": {"inputs": _v2_input([1, 1, 32, 32])["inputs"] * 2},
    "outputs-not-a-list": {**_v2_input([1, 1, 32, 32]), "outputs": "probabilities"},
    "output-unknown": {**_v2_input([1, 1, 32, 32]), "outputs": [{"name": "logits"}]},
    "id-not-a-string": {**_v2_input([1, 1, 32, 32]), "id": {"x": 1}},
    "no-inputs": {"input": _v2_input([1, 1, 32, 32])["inputs"]},
}


@pytest.mark.parametrize("name", list(V2_BAD))
def test_bad_v2_requests_are_400_or_413_with_a_message(server, name: str) -> None:
    response = _v2(server, "lenet5", V2_BAD[name])
    assert response.status_code in (400, 413), (name, response.status_code, response.text[:300])
    _error(response)


@pytest.mark.parametrize(("height", "width"), [(1, 1), (7, 13), (16, 24), (0, 16)])
def test_unet_refuses_sizes_it_cannot_take_and_says_what_it_takes(server, height: int, width: int) -> None:
    response = _v2(server, "unet", _v2_input([1, 3, height, width]))
    assert response.status_code == 400
    message = _error(response)
    assert ("multiples of 16" in message) or ("at least 1" in message), message


def test_unet_takes_any_multiple_of_its_size_step(server) -> None:
    response = _v2(server, "unet", _v2_input([1, 3, 32, 48]))
    assert response.status_code == 200, response.text[:300]
    assert response.json()["outputs"][0]["shape"][2:] == [32, 48]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/no/such/path", 404),
        ("GET", "/v2/models/lenet5/versions/1/nothing", 404),
        ("POST", "/livez", 405),
        ("DELETE", "/classify", 405),
        ("PUT", "/v2/models/lenet5/infer", 405),
        ("GET", "/static/../../etc/passwd", 404),
    ],
)
def test_errors_from_every_layer_are_json(server, method: str, path: str, status: int) -> None:
    response = requests.request(method, f"{server.url}{path}", timeout=30)
    assert response.status_code == status
    _error(response)


def test_the_error_middleware_rewrites_plain_text_and_escaped_exceptions() -> None:
    """JSONErrors, the one error middleware on the service: a plain-text error becomes {"error"} with its headers
    kept (a 405's Allow), an exception that escaped before the answer started a JSON 500 without its details, and a
    success passes untouched."""
    from cnnserve.service.app.json_errors import JSONErrors

    async def app(scope, receive, send) -> None:
        if scope["path"] == "/boom":
            raise RuntimeError("secret details")
        status, body = (200, b"fine") if scope["path"] == "/ok" else (405, b"Method Not Allowed")
        headers = [(b"content-type", b"text/plain"), (b"allow", b"GET")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def call(path: str) -> tuple[int, dict[bytes, bytes], bytes]:
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        asyncio.run(JSONErrors(app)({"type": "http", "path": path, "method": "GET"}, receive, send))
        return sent[0]["status"], dict(sent[0]["headers"]), b"".join(m.get("body", b"") for m in sent[1:])

    status, headers, body = call("/wrong")
    assert (status, headers[b"allow"], headers[b"content-type"]) == (405, b"GET", b"application/json")
    assert json.loads(body) == {"error": "Method Not Allowed"} and int(headers[b"content-length"]) == len(body)
    status, headers, body = call("/boom")
    assert status == 500 and headers[b"content-type"] == b"application/json"
    assert set(json.loads(body)) == {"error"} and b"secret" not in body
    assert call("/ok") == (200, {b"content-type": b"text/plain", b"allow": b"GET"}, b"fine")


# --- 4. typed options take JSON booleans and numbers -----------------------------------------------------------------


def _json_post(server, route: str, image: bytes, **fields: object) -> requests.Response:
    body = {"image": base64.b64encode(image).decode(), **fields}
    return requests.post(f"{server.url}{route}", json=body, timeout=60)


@pytest.mark.parametrize(
    ("route", "fields", "present", "absent"),
    [
        ("/segment", {"model": "unet", "render": True, "overlay": True}, ["rendered", "overlay"], []),
        ("/segment", {"model": "unet", "render": False, "overlay": False}, [], ["rendered", "overlay"]),
        ("/detect", {"render": True, "score_threshold": 0.25, "max_detections": 3}, ["rendered"], []),
        ("/anomaly", {"heatmap": True}, ["heatmap"], []),
        ("/anomaly", {"heatmap": "true"}, ["heatmap"], []),
        ("/classify", {"model": "lenet5", "top_k": 3}, ["predictions"], []),
        ("/classify", {"model": "lenet5", "top_k": 3.0}, ["predictions"], []),
    ],
)
def test_json_bodies_take_booleans_and_numbers(server, digit, route, fields, present, absent) -> None:
    response = _json_post(server, route, digit, **fields)
    assert response.status_code == 200, response.text[:300]
    body = response.json()
    assert all(key in body for key in present) and not any(key in body for key in absent)
    if route == "/classify":
        assert len(body["predictions"]) == 3


@pytest.mark.parametrize("fields", [{"top_k": 2.5}, {"top_k": "3x"}, {"top_k": [3]}, {"top_k": {"k": 3}}])
def test_json_numbers_that_are_not_integers_are_400(server, digit, fields) -> None:
    response = _json_post(server, "/classify", digit, model="lenet5", **fields)
    assert response.status_code == 400 and "top_k" in _error(response)


def test_form_strings_still_parse(server, digit) -> None:
    response = requests.post(
        f"{server.url}/segment", files={"image": digit}, data={"model": "unet", "overlay": "1"}, timeout=60
    )
    assert response.status_code == 200 and "overlay" in response.json()


# --- 5. metrics have bounded labels ------------------------------------------------------------------------------


def test_a_thousand_made_up_paths_add_almost_nothing_to_metrics(server, digit) -> None:
    async def ask(paths: list[str]) -> None:
        import aiohttp

        async with aiohttp.ClientSession() as session:

            async def one(path: str) -> None:
                async with session.get(server.url + path) as response:
                    await response.read()

            for start in range(0, len(paths), 50):
                await asyncio.gather(*(one(p) for p in paths[start : start + 50]))

    asyncio.run(ask([f"/v2/models/m{i}/ready" for i in range(10)] + ["/x0"]))  # every route's series exists
    requests.post(f"{server.url}/classify", files={"image": digit}, data={"model": "nope-0"}, timeout=30)
    before = len(requests.get(f"{server.url}/metrics", timeout=30).content)
    paths = [f"/v2/models/m{i}/ready" for i in range(10, 510)] + [f"/made/up/{i}" for i in range(500)]
    asyncio.run(ask(paths))
    for i in range(1, 50):  # unknown model names are not labels either
        requests.post(f"{server.url}/classify", files={"image": digit}, data={"model": f"nope-{i}"}, timeout=30)
    text = requests.get(f"{server.url}/metrics", timeout=30).text
    assert len(text.encode()) - before < 10_000  # 10 KB
    assert 'endpoint="/v2/models/{name}/ready"' in text
    assert "m123" not in text and "/made/up" not in text and "nope-7" not in text


# --- 6. the smaller points -----------------------------------------------------------------------------------------


def _slow_headers(url: str, count: int) -> list[socket.socket]:
    host, port = urlsplit(url).hostname, urlsplit(url).port
    sockets = []
    for _ in range(count):
        s = socket.create_connection((host, port), timeout=30)
        s.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n")
        sockets.append(s)
    return sockets


def _read_until_closed(s: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = s.recv(4096)
        except OSError:
            return data
        if not chunk:
            return data
        data += chunk


def test_connections_that_do_not_finish_their_headers_are_closed(server) -> None:
    """The test server's header timeout is 3 s (conftest): 30 connections that send half a request and then one
    byte every half second are answered 408 and closed, on a fresh connection and on a kept-alive one."""
    start = time.monotonic()
    sockets = _slow_headers(server.url, 30)
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(0.5):
            for s in sockets:
                with contextlib.suppress(OSError):
                    s.sendall(b"X")

    trickler = threading.Thread(target=trickle)
    trickler.start()
    try:
        answers = [_read_until_closed(s) for s in sockets]
    finally:
        stop.set()
        trickler.join()
        for s in sockets:
            s.close()
    assert time.monotonic() - start < 20
    assert all(a.startswith(b"HTTP/1.1 408") and b'"error"' in a for a in answers), answers[0]

    s = socket.create_connection((urlsplit(server.url).hostname, urlsplit(server.url).port), timeout=30)
    s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    first = b""
    while b'{"live":true}' not in first:
        first += s.recv(4096)
    s.sendall(b"GET /li")  # the next request on the same connection never finishes its headers
    assert _read_until_closed(s).startswith(b"HTTP/1.1 408")
    s.close()
    assert requests.get(f"{server.url}/livez", timeout=10).status_code == 200


def test_two_image_parts_are_refused(server, digit) -> None:
    files = [("image", ("a.png", digit)), ("image", ("b.png", _png(Image.new("L", (8, 8)))))]
    response = requests.post(f"{server.url}/classify", files=files, timeout=30)
    assert response.status_code == 400 and "more than one `image`" in _error(response)
    fields = [("model", "lenet5"), ("model", "resnet18")]
    response = requests.post(f"{server.url}/classify", files={"image": digit}, data=fields, timeout=30)
    assert response.status_code == 400 and "model" in _error(response)


def test_base64_with_line_breaks_is_accepted(server, digit) -> None:
    wrapped = base64.encodebytes(digit).decode()  # 76 characters a line, what `base64` prints without -w0
    assert "\n" in wrapped
    response = requests.post(f"{server.url}/classify", json={"image": wrapped, "model": "lenet5"}, timeout=30)
    plain = requests.post(
        f"{server.url}/classify", json={"image": base64.b64encode(digit).decode(), "model": "lenet5"}, timeout=30
    )
    assert response.status_code == 200 and response.json() == plain.json()
    crlf = wrapped.replace("\n", "\r\n")
    assert requests.post(f"{server.url}/classify", json={"image": crlf}, timeout=30).status_code == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v2/health/live", {"live": True}),
        ("/v2/health/ready", {"ready": True}),
        ("/v2/models/lenet5/ready", {"name": "lenet5", "ready": True}),
        ("/v2/models/lenet5/versions/1/ready", {"name": "lenet5", "ready": True}),
    ],
)
def test_health_and_ready_answer_json(server, path: str, body: dict) -> None:
    response = requests.get(f"{server.url}{path}", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == body


def test_the_openapi_document_describes_the_v2_routes(server) -> None:
    spec = requests.get(f"{server.url}/openapi.json", timeout=10).json()
    infer = spec["paths"]["/v2/models/{name}/infer"]["post"]
    assert {"400", "404", "413", "503"} <= set(infer["responses"])
    body = infer["requestBody"]["content"]
    assert body["application/json"]["schema"]["required"] == ["inputs"]
    assert "application/octet-stream" in body
    assert "$ref" not in json.dumps(body)  # written out in place: a request body cannot point into $defs
    ready = spec["paths"]["/v2/models/{name}/ready"]["get"]["responses"]
    assert "404" in ready and "200" in ready


# --- the JSON limits, as functions other routes call ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        (b"{}", 1),
        (b'{"a": [[1, 2], {"b": "[[[[["}]}', 3),
        (b'["\\"[[[", [[]]]', 3),
        (b'"\\\\"', 0),
        (b"[" * 50 + b"]" * 50, 50),
    ],
)
def test_json_depth_counts_brackets_outside_strings(text: bytes, depth: int) -> None:
    assert json_depth(text) == depth


def test_parse_json_turns_every_parser_failure_into_bad_input() -> None:
    for text in (b"[" * 100_000 + b"]" * 100_000, b"9" * 5000, b"\xff", b'{"a": }'):
        with pytest.raises(BadInput):
            parse_json(text, max_depth=10_000_000)
    assert parse_json(b'{"k": [1, 2.5, true, null]}', max_depth=3) == {"k": [1, 2.5, True, None]}


# --- the API tier's fixed cost: no tracing middleware when there is nowhere to send a span -------------------------


def test_opentelemetrys_middleware_is_left_out_only_without_an_exporter(monkeypatch) -> None:
    from cnnserve.service.app import server as patches
    from opentelemetry.instrumentation import asgi

    original = asgi.OpenTelemetryMiddleware
    monkeypatch.setattr(asgi, "OpenTelemetryMiddleware", original)  # whatever happens here is undone afterwards
    monkeypatch.setattr(patches, "tracing_configured", lambda: True)
    assert not patches.without_idle_tracing() and asgi.OpenTelemetryMiddleware is original
    monkeypatch.setattr(patches, "tracing_configured", lambda: False)
    assert patches.without_idle_tracing() and asgi.OpenTelemetryMiddleware is not original

    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    stand_in = asgi.OpenTelemetryMiddleware(app, excluded_urls=None, tracer_provider=None)
    asyncio.run(stand_in({"type": "http"}, None, send))
    assert sent == [{"type": "http.response.start", "status": 204, "headers": []}]


def test_the_default_configuration_names_no_exporter() -> None:
    from cnnserve.service.app.server import tracing_configured

    assert tracing_configured() is False
