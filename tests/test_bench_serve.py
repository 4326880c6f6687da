"""`cnnserve bench serve` end to end on CPU (slow: it starts a two-tier `bentoml serve`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_bench_serve_writes_the_headline_keys_and_a_summary(model_store, tmp_path: Path) -> None:
    from benchmarks.serve import serve_benchmark

    output = tmp_path / "gpu" / "results.json"
    result = serve_benchmark(
        model="lenet5",
        levels=(1, 64),
        duration=1.5,
        api_workers=(1,),
        peers=(),
        raw_batches=(1, 4),
        output=output,
        log=lambda _: None,
    )
    saved = json.loads(output.read_text())
    for key in (
        "device",
        "served_img_s_64",
        "peer_bentoml_img_s_64",
        "peer_torch_img_s_64",
        "raw_ort_fp16_img_s_bs64",
        "p99_ms_64",
    ):
        assert key in saved
    assert saved["served_img_s_64"] > 0 and saved["p99_ms_64"] > 0
    runs = [r for r in result["runs"] if r["server"] == "cnnserve"]
    assert [r["concurrency"] for r in runs] == [1, 64] and all(r["errors"] == 0 for r in runs)
    assert set(runs[0]["stage_ms"]) == {"decode", "preprocess", "inference", "postprocess"}
    assert runs[1]["profile"]["cpu_cores_busy"]["model_tier"] > 0  # the model tier is its own process
    assert result["client_ceiling"]["requests_per_s"] > 0
    assert "| cnnserve |" in (output.parent / "summary.md").read_text()
