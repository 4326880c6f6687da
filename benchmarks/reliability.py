"""``cnnserve bench reliability``: the service under hostile input — memory, ``/livez`` and 5xx, measured.

It starts ``bentoml serve`` (one tier, the default demo set: LeNet-5, YOLO shapes, CAE, U-Net) and, watching the
worker's resident memory every few milliseconds:

1. **hostile uploads, one at a time**: the largest uploads the limits allow (``CNNSERVE_MAX_PIXELS``,
   ``CNNSERVE_MAX_UPLOAD_MB``) in the forms that cost the most — a PNG of zeros, a noisy JPEG, 16-bit and float
   images, transparency, a progressive JPEG, a base64 JSON body — to the answers that cost the most (overlays,
   renders, denoised PNGs), and ``/v2`` bodies at their limit; each with its status, time and the worker's peak RSS;
2. **eight at once**: eight such uploads kept in flight while ``/livez`` is asked every 20 ms on the same worker
   (its p50/p99), and the worker's peak RSS;
3. **a soak**: 32 clients for 60 s, a mix of good requests on every route and bad ones (corrupt images, bombs,
   oversize bodies, bad fields and JSON, bad ``/v2`` tensors, unknown paths), counting statuses, 5xx and transport
   errors, with the worker's RSS before (after 10 s of the same load) and after (once it has settled).

Results: ``benchmarks/reliability/results.json`` (``soak_requests``, ``soak_5xx``, ``soak_rss_growth_mb``,
``max_rss_mb_hostile``, ``livez_p99_ms_under_attack`` first) and ``RESULTS.md`` beside it.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import os
import platform
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .suite import _free_port, _start, _stop

__all__ = ["Case", "hostile_cases", "reliability_benchmark"]

MODELS = "lenet5,yolov1_shapes,cae,unet"


@dataclass
class Case:
    """One HTTP request: what it is, and what it should get."""

    name: str
    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    expect: tuple[int, ...] = (200,)
    method: str = "POST"


def _encode(img: Any, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def _multipart(image: bytes, fields: dict[str, str] | None = None, images: int = 1) -> tuple[bytes, dict[str, str]]:
    """A form with ``images`` file parts named ``image`` (one, unless testing a repeated part) and text fields."""
    boundary = "cnnserve-bench-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in (fields or {}).items()
    ]
    file_part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="upload"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + image
        + b"\r\n"
    )
    body = b"".join(parts) + file_part * images + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def _form_case(name: str, path: str, image: bytes, expect: tuple[int, ...] = (200,), **fields: str) -> Case:
    body, headers = _multipart(image, fields)
    return Case(name, path, body, headers, expect)


def _noisy_jpeg(side: int, limit: int, progressive: bool = False) -> bytes:
    """A side×side JPEG of coarse noise (decodes to pictures that no PNG compresses), as large as fits ``limit``."""
    from PIL import Image

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (side // 4 + 1, side // 4 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((side, side), Image.Resampling.NEAREST)
    img = Image.fromarray(np.asarray(img) ^ rng.integers(0, 32, (side, side, 3), dtype=np.uint8))
    for quality in (60, 40, 25, 15, 8):
        data = _encode(img, "JPEG", quality=quality, progressive=progressive)
        if len(data) <= limit:
            return data
    raise RuntimeError(f"no noisy {side}² JPEG fits {limit} bytes")


def _at_limit(data: bytes, limit: int) -> bytes:
    """The image followed by zeros up to just under the upload limit (decoders ignore what follows an image): the
    largest body the limit allows, held in memory while the image is worked on."""
    return data + b"\0" * max(0, limit - 1024 - len(data))


def hostile_cases(max_pixels: int, max_upload: int) -> list[Case]:
    """The uploads at the limits that cost the service the most, one per way an image can cost memory."""
    from PIL import Image

    side = math.isqrt(max_pixels)
    zeros = _encode(Image.new("RGB", (side, side)), "PNG")
    ramp = np.tile(np.linspace(0, 65535, side, dtype=np.uint16), (side, 1))
    sixteen = _encode(Image.fromarray(ramp), "PNG")
    floats = _encode(Image.fromarray(ramp.astype(np.float32) / 7.0, mode="F"), "TIFF", compression="tiff_deflate")
    alpha = Image.new("RGBA", (side, side), (10, 200, 30, 0))
    alpha.putalpha(Image.linear_gradient("L").resize((side, side)))
    rgba = _encode(alpha, "PNG")
    noisy = _at_limit(_noisy_jpeg(side, max_upload), max_upload)
    progressive = _noisy_jpeg(side, max_upload, progressive=True)
    encoded = base64.b64encode(_at_limit(_noisy_jpeg(side, max_upload), max_upload)).decode()
    json_body = json.dumps({"image": encoded, "model": "lenet5"}).encode()
    cases = [
        _form_case("png-zeros /segment overlay+render", "/segment", zeros, overlay="true", render="true"),
        _form_case("noisy-jpeg /segment overlay+render", "/segment", noisy, overlay="true", render="true"),
        _form_case("noisy-jpeg /detect render", "/detect", noisy, render="true"),
        _form_case("noisy-jpeg /denoise", "/denoise", noisy),
        _form_case("progressive-jpeg /denoise", "/denoise", progressive),
        _form_case("png-16-bit /segment overlay", "/segment", sixteen, overlay="true"),
        _form_case("tiff-float /denoise", "/denoise", floats),
        _form_case("png-rgba /detect render", "/detect", rgba, render="true"),
        _form_case("png-zeros /anomaly heatmap", "/anomaly", zeros, heatmap="true"),
        Case("json-base64 /classify", "/classify", json_body, {"Content-Type": "application/json"}),
    ]
    return cases + _v2_cases()


def _v2_cases() -> list[Case]:
    """``/v2`` bodies at the default limits: U-Net binary (its batch limit at its input size) and LeNet-5 JSON."""
    unet = np.zeros((2, 3, 128, 128), dtype=np.float32)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": list(unet.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": unet.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    binary = Case(
        "v2 binary /v2/models/unet/infer",
        "/v2/models/unet/infer",
        header + unet.tobytes(),
        {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))},
    )
    rows = 100  # about 1.1 MB of JSON: near LeNet-5's limit (its batch limit in binary FP32 + 1 MB)
    data = np.random.default_rng(0).random(rows * 1024).round(6).tolist()
    lenet = {"inputs": [{"name": "images", "shape": [rows, 1, 32, 32], "datatype": "FP32", "data": data}]}
    text = Case("v2 json /v2/models/lenet5/infer", "/v2/models/lenet5/infer", json.dumps(lenet).encode())
    return [binary, text]


# --- the soak's mix -----------------------------------------------------------------------------------------------


def soak_mix() -> list[tuple[float, Case]]:
    """(weight, request): good requests on every route, and the bad ones a hostile client sends."""
    from cnnserve.export.demos.digits import digit_png, digits_split
    from PIL import Image

    split = digits_split()
    digit = digit_png(split.test_images[0])
    rng = np.random.default_rng(1)
    photo = _encode(Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)), "JPEG", quality=80)
    shapes = _encode(Image.new("RGB", (448, 448), (240, 240, 240)), "PNG")
    bomb = _encode(Image.new("L", (20_000, 20_000)), "PNG")  # 400 M pixels in a few hundred kB
    good = [
        (20, _form_case("classify digit", "/classify", digit, model="lenet5")),
        (
            4,
            Case(
                "classify json",
                "/classify",
                json.dumps({"image": base64.b64encode(digit).decode()}).encode(),
                {"Content-Type": "application/json"},
            ),
        ),  # fmt: skip
        (4, _form_case("detect photo", "/detect", photo)),
        (2, _form_case("detect render", "/detect", shapes, render="true")),
        (3, _form_case("segment overlay", "/segment", photo, overlay="true", render="true")),
        (3, _form_case("denoise digit", "/denoise", digit)),
        (3, _form_case("anomaly heatmap", "/anomaly", digit, heatmap="true")),
        (3, _v2_cases()[0]),
        (1, Case("models", "/models", b"", method="GET")),
        (1, Case("v2 ready", "/v2/models/lenet5/ready", b"", method="GET")),
    ]
    bad = [
        (4, _form_case("corrupt png", "/classify", digit[: len(digit) // 2], (400,))),
        (3, _form_case("random bytes", "/segment", rng.bytes(4000), (400,))),
        (2, _form_case("bomb", "/detect", bomb, (413,))),
        (2, Case("deep json", "/classify", b"[" * 5000 + b"]" * 5000, {"Content-Type": "application/json"}, (400,))),
        (
            2,
            Case(
                "huge int",
                "/classify",
                b'{"image": "", "top_k": ' + b"9" * 5000 + b"}",
                {"Content-Type": "application/json"},
                (400,),
            ),
        ),  # fmt: skip
        (2, _form_case("bad field", "/classify", digit, (400,), top_k="many")),
        (2, _form_case("unknown model", "/classify", digit, (404,), model=f"m{rng.integers(1e9)}")),
        (2, Case("two images", "/classify", *_multipart(digit, images=2), (400,))),
        (
            2,
            Case(
                "v2 bad shape",
                "/v2/models/unet/infer",
                json.dumps(
                    {"inputs": [{"name": "images", "shape": [1, 3, 7, 13], "datatype": "FP32", "data": [0.0] * 273}]}
                ).encode(),
                expect=(400,),
            ),
        ),  # fmt: skip
        (
            2,
            Case(
                "v2 bad parameters",
                "/v2/models/lenet5/infer",
                json.dumps({"inputs": [], "parameters": 5}).encode(),
                expect=(400,),
            ),
        ),  # fmt: skip
        (2, Case("v2 over limit", "/v2/models/lenet5/infer", b"{" + b" " * 3_000_000 + b"}", expect=(413,))),
        (2, Case("unknown path", "/v2/models/m/versions/x/ready", b"", method="GET", expect=(404,))),
        (1, Case("not json", "/v2/models/lenet5/infer", b"\xff\xfe{", expect=(400,))),
        (1, _form_case("oversize upload", "/classify", b"\0" * 21_000_000, (413,))),
    ]
    return good + bad


# --- watching the worker ------------------------------------------------------------------------------------------


def _worker_pid(root_pid: int, timeout: float = 30) -> int:
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(root_pid).children(recursive=True):
            try:
                if "_bentoml_impl.worker.service" in " ".join(child.cmdline()):
                    return child.pid
            except psutil.Error:
                continue
        time.sleep(0.5)
    raise RuntimeError("no BentoML worker process found under the server")


class RssWatch:
    """Samples a process's resident memory every ``period`` seconds in a thread; ``peak`` since the last reset."""

    def __init__(self, pid: int, period: float = 0.005) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.period = period
        self.peak = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now(self) -> int:
        return self.process.memory_info().rss

    def reset(self) -> None:
        self.peak = self.now()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.now())
            except Exception:  # the process went away
                return
            time.sleep(self.period)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _mb(nbytes: float) -> float:
    return round(nbytes / 1e6, 1)  # MB = 10⁶ bytes, as the service's settings and messages


def _send(url: str, case: Case, timeout: float = 120) -> tuple[int, float]:
    import requests

    start = time.perf_counter()
    try:
        r = requests.request(
            case.method, url + case.path, data=case.body or None, headers=case.headers, timeout=timeout
        )
        status = r.status_code
    except requests.RequestException:
        status = 0
    return status, time.perf_counter() - start


def _settle(watch: RssWatch, seconds: float = 3.0) -> int:
    time.sleep(seconds)
    return watch.now()


# --- the phases ---------------------------------------------------------------------------------------------------


def one_at_a_time(url: str, watch: RssWatch, cases: list[Case], log: Callable[[str], None]) -> list[dict[str, Any]]:
    rows = []
    for case in cases:
        before = _settle(watch, 1.0)
        watch.reset()
        status, seconds = _send(url, case)
        peak = watch.peak
        after = _settle(watch, 1.0)
        row = {
            "case": case.name,
            "body_mb": _mb(len(case.body)),
            "status": status,
            "ok": status in case.expect,
            "seconds": round(seconds, 2),
            "rss_before_mb": _mb(before),
            "rss_peak_mb": _mb(peak),
            "rss_after_mb": _mb(after),
        }
        log(json.dumps(row))
        rows.append(row)
    return rows


def under_attack(url: str, watch: RssWatch, cases: list[Case], seconds: float, in_flight: int) -> dict[str, Any]:
    """``in_flight`` hostile uploads kept going while ``/livez`` is asked every 20 ms."""
    import requests

    stop = threading.Event()
    statuses: Counter = Counter()
    lock = threading.Lock()

    def attacker(index: int) -> None:
        i = index
        while not stop.is_set():
            status, _ = _send(url, cases[i % len(cases)])
            with lock:
                statuses[status] += 1
            i += 1

    watch.reset()
    threads = [threading.Thread(target=attacker, args=(i,), daemon=True) for i in range(in_flight)]
    for t in threads:
        t.start()
    time.sleep(2.0)  # let every upload arrive and start
    latencies = []
    session = requests.Session()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        start = time.perf_counter()
        try:
            ok = session.get(url + "/livez", timeout=10).status_code == 200
        except requests.RequestException:
            ok = False
        latencies.append((time.perf_counter() - start) * 1000 if ok else 10_000.0)
        time.sleep(0.02)
    stop.set()
    for t in threads:
        t.join(timeout=180)
    lat = np.asarray(latencies)
    return {
        "in_flight": in_flight,
        "seconds": seconds,
        "livez_requests": len(latencies),
        "livez_p50_ms": round(float(np.percentile(lat, 50)), 1),
        "livez_p99_ms": round(float(np.percentile(lat, 99)), 1),
        "livez_max_ms": round(float(lat.max()), 1),
        "uploads": dict(sorted((str(k), v) for k, v in statuses.items())),
        "rss_peak_mb": _mb(watch.peak),
    }


async def _soak_async(url: str, mix: list[tuple[float, Case]], clients: int, seconds: float) -> dict[str, Any]:
    import aiohttp

    weights = [w for w, _ in mix]
    cases = [c for _, c in mix]
    statuses: Counter = Counter()
    unexpected: Counter = Counter()
    deadline = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=120)

    async def client(seed: int) -> None:
        rng = random.Random(seed)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while time.monotonic() < deadline:
                case = rng.choices(cases, weights)[0]
                try:
                    async with session.request(case.method, url + case.path, data=case.body or None,
                                               headers=case.headers) as response:  # fmt: skip
                        await response.read()
                        status = response.status
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    status = 0
                statuses[status] += 1
                if status not in case.expect:
                    unexpected[f"{case.name}: {status}"] += 1

    await asyncio.gather(*(client(i) for i in range(clients)))
    return {"statuses": statuses, "unexpected": unexpected}


def soak(url: str, watch: RssWatch, clients: int, seconds: float, warm_seconds: float = 10.0) -> dict[str, Any]:
    """The soak; ``warm_seconds`` of the same load first, so that "before" is measured once onnxruntime's arena and
    the allocator have seen the soak's batch sizes (growth after that is what a leak would show)."""
    mix = soak_mix()
    asyncio.run(_soak_async(url, mix, clients, warm_seconds))
    before = _settle(watch, 2.0)
    watch.reset()
    result = asyncio.run(_soak_async(url, mix, clients, seconds))
    peak = watch.peak
    after = _settle(watch, 5.0)
    statuses = result["statuses"]
    return {
        "clients": clients,
        "seconds": seconds,
        "requests": sum(statuses.values()),
        "statuses": dict(sorted((str(k), v) for k, v in statuses.items())),
        "5xx": sum(v for k, v in statuses.items() if k >= 500),
        "transport_errors": statuses.get(0, 0),
        "unexpected": dict(result["unexpected"].most_common(20)),
        "rss_before_mb": _mb(before),
        "rss_peak_mb": _mb(peak),
        "rss_after_mb": _mb(after),
    }


# --- the whole run ------------------------------------------------------------------------------------------------


def reliability_benchmark(
    *,
    clients: int = 32,
    duration: float = 60.0,
    attack_seconds: float = 20.0,
    in_flight: int = 8,
    output: Path = Path("benchmarks/reliability/results.json"),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Start the service, run the three phases, write results.json and RESULTS.md."""
    from cnnserve.service.settings import Settings

    settings = Settings()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    logs = Path(tempfile.mkdtemp(prefix="cnnserve-bench-reliability-"))
    env = {**os.environ, "CNNSERVE_MODELS": MODELS, "CNNSERVE_TIERS": "one", "CNNSERVE_ACCESS_LOG": "false"}
    cmd = [sys.executable, "-m", "bentoml", "serve", "--port", str(port), "--host", "127.0.0.1"]
    log("making the hostile corpus …")
    cases = hostile_cases(settings.max_pixels, settings.max_upload_bytes)
    log(f"starting the service ({MODELS}) …")
    proc = _start(cmd, env, url + "/readyz", logs / "serve.log")
    try:
        watch = RssWatch(_worker_pid(proc.pid))
        for _, case in soak_mix()[:8]:  # warm every route
            _send(url, case)
        idle = _settle(watch, 2.0)
        log(f"worker RSS after warm-up: {_mb(idle)} MB; hostile uploads one at a time …")
        single = one_at_a_time(url, watch, cases, log)
        worst = [c for c in cases if c.path in ("/segment", "/denoise", "/detect")][:4]
        log(f"{in_flight} hostile uploads in flight, /livez every 20 ms for {attack_seconds:.0f} s …")
        attack = under_attack(url, watch, worst, attack_seconds, in_flight)
        log(json.dumps(attack))
        log(f"soak: {clients} clients for {duration:.0f} s …")
        soaked = soak(url, watch, clients, duration)
        log(json.dumps(soaked))
        watch.close()
    finally:
        _stop(proc)
    results = {
        "soak_requests": soaked["requests"],
        "soak_5xx": soaked["5xx"],
        "soak_rss_growth_mb": round(soaked["rss_after_mb"] - soaked["rss_before_mb"], 1),
        "max_rss_mb_hostile": max(max(r["rss_peak_mb"] for r in single), attack["rss_peak_mb"]),
        "livez_p99_ms_under_attack": attack["livez_p99_ms"],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "settings": {
            "max_pixels": settings.max_pixels,
            "max_upload_mb": settings.max_upload_mb,
            "body_memory_mb": settings.body_memory_mb,
            "work_memory_mb": settings.work_memory_mb,
            "image_threads": settings.image_threads,
            "header_timeout_s": settings.header_timeout_s,
        },
        "models": MODELS,
        "rss_idle_mb": _mb(idle),
        "hostile_one_at_a_time": single,
        "under_attack": attack,
        "soak": soaked,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    _write_summary(results, output.with_name("RESULTS.md"))
    return results


def _write_summary(r: dict[str, Any], path: Path) -> None:
    s = r["settings"]
    lines = [
        "# Reliability under hostile input",
        "",
        "`cnnserve bench reliability` (`python -m benchmarks reliability`; `benchmarks/reliability.py` says what it "
        "does). One tier, one worker, the default demo set "
        f"({r['models']}), on {r['machine']}, shared with other work (times are noisy).",
        "",
        f"Limits: `CNNSERVE_MAX_PIXELS` {s['max_pixels']:,}, `CNNSERVE_MAX_UPLOAD_MB` {s['max_upload_mb']:g}, "
        f"`CNNSERVE_BODY_MEMORY_MB` {s['body_memory_mb']:g}, `CNNSERVE_WORK_MEMORY_MB` {s['work_memory_mb']:g}, "
        f"`CNNSERVE_HEADER_TIMEOUT_S` {s['header_timeout_s']:g}.",
        "",
        "| result | value | goal |",
        "|---|---|---|",
        f"| worker RSS, idle after warm-up | {r['rss_idle_mb']} MB | |",
        f"| worker RSS, highest with hostile uploads (`max_rss_mb_hostile`) | {r['max_rss_mb_hostile']} MB "
        "| < 1000 MB (1 GB) |",
        f"| `/livez` p99 with {r['under_attack']['in_flight']} hostile uploads in flight "
        f"(`livez_p99_ms_under_attack`) | {r['livez_p99_ms_under_attack']} ms | < 100 ms |",
        f"| soak: requests (`soak_requests`) | {r['soak_requests']:,} | |",
        f"| soak: 5xx (`soak_5xx`) | {r['soak_5xx']} | 0 |",
        f"| soak: RSS growth, before → after (`soak_rss_growth_mb`) | {r['soak_rss_growth_mb']} MB | |",
        "",
        "## Hostile uploads, one at a time",
        "",
        "| upload | body MB | status | s | RSS before → peak → after (MB) |",
        "|---|---|---|---|---|",
    ]
    for row in r["hostile_one_at_a_time"]:
        lines.append(
            f"| {row['case']} | {row['body_mb']} | {row['status']} | {row['seconds']} | "
            f"{row['rss_before_mb']} → {row['rss_peak_mb']} → {row['rss_after_mb']} |"
        )
    a, k = r["under_attack"], r["soak"]
    lines += [
        "",
        f"## {a['in_flight']} in flight",
        "",
        f"{a['livez_requests']} `/livez` requests over {a['seconds']:g} s: p50 {a['livez_p50_ms']} ms, "
        f"p99 {a['livez_p99_ms']} ms, max {a['livez_max_ms']} ms. Uploads answered: {a['uploads']}. "
        f"Worker peak RSS {a['rss_peak_mb']} MB. Each of these uploads reserves most of the work budget, so they run "
        "one at a time; one that waits longer than `CNNSERVE_MAX_LATENCY_MS` for memory is answered 503 (busy), "
        "never 500 or 504.",
        "",
        "## Soak",
        "",
        f"{k['clients']} clients, {k['seconds']:g} s (after 10 s of the same load), {k['requests']:,} requests: "
        f"statuses {k['statuses']} "
        f"(0 = transport error: {k['transport_errors']}). Worker RSS {k['rss_before_mb']} → peak {k['rss_peak_mb']} "
        f"→ {k['rss_after_mb']} MB after 5 s.",
    ]
    if k["unexpected"]:
        lines += ["", f"Answers other than the expected ones: {k['unexpected']}"]
    path.write_text("\n".join(lines) + "\n")
