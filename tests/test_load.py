"""Load through `cnnserve bench --http`: concurrent clients, every answer correct, no errors, no memory creep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from cnnserve.export.demos.digits import digit_png, digits_split

from benchmarks.loadtest import run_load

CNNSERVE = str(Path(sys.executable).parent / "cnnserve")


def _service_rss(pid: int) -> int:
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])


def test_bench_http_cli_reports_throughput_and_latency(server, tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    result = subprocess.run(
        [
            CNNSERVE,
            "bench",
            "--http",
            server.url,
            "--model",
            "lenet5",
            "--concurrency",
            "8",
            "--duration",
            "3",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=os.environ,
        timeout=120,
        check=True,
    )
    assert "req/s" in result.stdout
    report = json.loads(out.read_text())
    assert report["errors"] == 0 and report["ok"] == report["requests"] > 0
    assert report["latency_ms"]["p50"] <= report["latency_ms"]["p95"] <= report["latency_ms"]["p99"]


def test_wrong_answers_and_error_statuses_are_counted(server) -> None:
    split = digits_split()
    seven = digit_png(split.test_images[list(split.test_labels).index(7)])
    report = run_load(
        server.url, image=seven, fields={"model": "lenet5"}, concurrency=2, duration=1, expect="1", log=lambda _: None
    )
    assert report["outcomes"].get("wrong-answer", 0) == report["requests"] > 0
    report = run_load(
        server.url, image=b"junk", fields={"model": "lenet5"}, concurrency=2, duration=1, log=lambda _: None
    )
    assert report["outcomes"].get("status:400", 0) == report["requests"] > 0


@pytest.mark.slow
def test_32_clients_for_30_seconds(server) -> None:
    split = digits_split()
    image, label = digit_png(split.test_images[5]), str(split.test_labels[5])
    rss: dict[str, int] = {}

    def sample() -> None:
        time.sleep(15)
        rss["first_half"] = _service_rss(server.process.pid)

    sampler = threading.Thread(target=sample)
    sampler.start()
    report = run_load(server.url, image=image, fields={"model": "lenet5"}, concurrency=32, duration=30, expect=label)
    sampler.join()
    rss["second_half"] = _service_rss(server.process.pid)
    assert report["errors"] == 0, report["outcomes"]
    assert report["ok"] == report["requests"] > 100
    assert rss["second_half"] < rss["first_half"] * 1.10, rss
