"""Triton's perf_analyzer against the served /v2 and gRPC (`cnnserve bench triton`), slow: it makes perf_analyzer's
own virtual environment on first use (tritonclient 2.51's wheel, NVIDIA's CUDA runtime wheel and Debian's libb64;
benchmarks/triton.py says why that one) and measures for a few seconds per level."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.slow
def test_perf_analyzer_measures_both_protocols(tmp_path: Path) -> None:
    from benchmarks.triton import triton_benchmark

    result = triton_benchmark(levels=(1, 8), interval_ms=1500, output=tmp_path / "results.json", log=print)
    assert (tmp_path / "RESULTS.md").is_file()
    runs = {(r["protocol"], r["concurrency"]): r for r in result["runs"]}
    assert set(runs) == {("http", 1), ("http", 8), ("grpc", 1), ("grpc", 8)}
    for run in runs.values():
        # perf_analyzer read the model's metadata, config and statistics and measured answered requests
        assert run["infer_per_s"] > 0 and run["server_requests"] > 0 and run["server_runs"] > 0
        assert run["images_per_run"] >= 1.0
    for protocol in ("http", "grpc"):
        assert runs[(protocol, 1)]["images_per_run"] == pytest.approx(1.0, abs=0.05)  # one client: nobody to share
    # eight clients share onnxruntime runs through the batcher (over one protocol at least: timing decides how much)
    assert max(runs[(p, 8)]["images_per_run"] for p in ("http", "grpc")) > 1.1
