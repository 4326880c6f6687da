"""`cnnserve score` beyond one process: `--engine ray` (Ray Data actors, a local Ray here) and `--workers N` give
the same records as the default local engine, row for row, including the error rows; CSV / Parquet manifests in,
Parquet out, and `--resume` for both engines and both output formats."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cnnserve.export.demos.digits import digit_png, digits_split

from cnnserve.score import read_records, score_files

CNNSERVE = str(Path(sys.executable).parent / "cnnserve")


def run(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([CNNSERVE, *args], capture_output=True, text=True, env=os.environ, timeout=600)
    assert result.returncode == 0, f"cnnserve {' '.join(args)} failed:\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A handful of digits, an undecodable file and a path that does not exist, in a fixed order."""
    split = digits_split()
    folder = tmp_path_factory.mktemp("digits")
    paths = []
    for i, pixels in enumerate(split.test_images[:10]):
        (folder / f"d{i:02d}.png").write_bytes(digit_png(pixels))
        paths.append(str(folder / f"d{i:02d}.png"))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    paths.insert(4, str(folder / "broken.png"))
    paths.insert(8, str(folder / "missing.png"))
    return paths


@pytest.fixture(scope="module")
def local_records(model_store: dict[str, str], images: list[str], tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("local") / "local.jsonl"
    score_files("lenet5", images, out, batch_size=3)
    return read_records(out)


def assert_same_rows(records: list[dict], expected: list[dict]) -> None:
    assert [r["path"] for r in records] == [r["path"] for r in expected]
    for got, want in zip(records, expected, strict=True):
        assert got.keys() == want.keys()
        if "error" in want:
            assert got["error"] == want["error"]
            continue
        assert got["model"] == want["model"]
        assert [p["index"] for p in got["predictions"]] == [p["index"] for p in want["predictions"]]
        np.testing.assert_allclose(
            [p["score"] for p in got["predictions"]], [p["score"] for p in want["predictions"]], atol=1e-6
        )


def _manifest_csv(path: Path, images: list[str]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "note"])
        writer.writerows([p, "x"] for p in images)
    return path


def test_ray_engine_gives_the_local_records_row_for_row(
    local_records: list[dict], images: list[str], tmp_path: Path
) -> None:
    manifest = _manifest_csv(tmp_path / "manifest.csv", images)
    out = tmp_path / "ray.jsonl"
    result = run("score", "--model", "lenet5", str(manifest), "--output", str(out), "--engine", "ray",
                 "--workers", "2", "--batch-size", "3")  # fmt: skip
    assert "scored 10, failed 2" in result.stdout
    assert "deprecated" not in result.stderr.lower()  # our own calls into Ray use its current API
    assert_same_rows(read_records(out), local_records)
    errors = {Path(r["path"]).name: r["error"] for r in local_records if "error" in r}
    assert set(errors) == {"broken.png", "missing.png"} and "cannot read file" in errors["missing.png"]


def test_ray_engine_writes_parquet_from_a_parquet_manifest_and_resumes(
    local_records: list[dict], images: list[str], tmp_path: Path
) -> None:
    import ray

    manifest = tmp_path / "manifest.parquet"
    pq.write_table(pa.table({"path": images}), manifest)
    half = tmp_path / "half.parquet"
    pq.write_table(pa.table({"path": images[:6]}), half)
    out = tmp_path / "scores.parquet"
    try:
        first = score_files("lenet5", [str(half)], out, engine="ray", workers=1, batch_size=4)
        assert first == {"scored": 5, "failed": 1, "skipped": 0}
        (out / "part-000099.tmp").write_bytes(b"a part torn by a kill")  # never renamed into place
        second = score_files("lenet5", [str(manifest)], out, engine="ray", workers=2, batch_size=4, resume=True)
    finally:
        ray.shutdown()
    assert second == {"scored": 5, "failed": 1, "skipped": 6}
    assert not list(out.glob("*.tmp"))
    assert_same_rows(read_records(out), local_records)
    table = pq.read_table(out)  # one dataset, readable whole
    assert table.column_names == ["path", "model", "error", "answer"] and table.num_rows == len(images)


def test_local_workers_give_the_same_rows_and_resume_parquet(
    local_records: list[dict], images: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "workers.jsonl"
    assert score_files("lenet5", images, out, workers=2, batch_size=2) == {"scored": 10, "failed": 2, "skipped": 0}
    assert_same_rows(read_records(out), local_records)

    parquet = tmp_path / "local.parquet"
    score_files("lenet5", images[:7], parquet, batch_size=3)
    resumed = score_files("lenet5", images, parquet, batch_size=3, resume=True)
    assert resumed == {"scored": 4, "failed": 1, "skipped": 7}
    assert_same_rows(read_records(parquet), local_records)
    # without --resume the output starts over
    assert score_files("lenet5", images[:2], parquet)["skipped"] == 0 and len(read_records(parquet)) == 2


def test_unknown_engine_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [CNNSERVE, "score", "--model", "lenet5", str(tmp_path), "--output", str(tmp_path / "o.jsonl"),
         "--engine", "spark"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "unknown engine 'spark'" in result.stderr and "Traceback" not in result.stderr
