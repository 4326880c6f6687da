"""The `cnnserve` command line as a user runs it: list, export, score (with resume), bench."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from cnnserve.export.demos.digits import digit_png, digits_split

CNNSERVE = str(Path(sys.executable).parent / "cnnserve")
ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([CNNSERVE, *args], capture_output=True, text=True, env=os.environ, timeout=600, cwd=cwd)
    if check and result.returncode != 0:
        raise AssertionError(f"cnnserve {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def test_list_shows_every_model_with_parameters() -> None:
    out = run("list").stdout
    assert "lenet5" in out and "vit_h_14" in out and "efficientnet_b7" in out
    line = next(row for row in out.splitlines() if row.startswith("resnet50 "))
    assert "25,557,032" in line and "3×224×224" in line


def test_help_reads_well() -> None:
    """-h as well as --help, every command in the summary, no type placeholders on flags."""
    top = run("-h").stdout
    assert top == run("--help").stdout
    summary = top.split("Options:")[0]
    commands = [line.split()[0] for line in top.split("Commands:")[1].splitlines() if line.strip()]
    assert {"list", "export", "train", "score", "tune", "bento", "export-repo", "bench"} <= set(commands)
    for command in commands:
        assert command in summary, f"{command} is missing from the summary"
        help_text = run(command, "-h").stdout
        assert "<bool>" not in help_text and ", ," not in help_text, help_text
        assert help_text.startswith(f"Usage: cnnserve {command}")
    assert "--defaults" in run("export", "-h").stdout


def test_list_columns_are_aligned() -> None:
    """Each column starts where its header does, however long the longest task name is."""
    lines = run("list", "--task", "semantic_segmentation").stdout.splitlines()
    header, rows = lines[0], lines[1:]
    start = header.index("input")
    assert rows and all(row[start - 2 : start] == "  " and row[start] != " " for row in rows), lines


def test_export_errors_are_one_line_messages(tmp_path: Path) -> None:
    unknown = run("export", "resnet19", check=False)
    assert unknown.returncode == 2 and "unknown model 'resnet19'" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    bad_file = tmp_path / "w.pth"
    bad_file.write_bytes(b"not a checkpoint")
    wrong = run("export", "lenet5", "--weights", str(bad_file), "--output", str(tmp_path / "x.onnx"), check=False)
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr


@pytest.fixture()
def digit_folder(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    split = digits_split()
    folder = tmp_path / "digits"
    (folder / "nested").mkdir(parents=True)
    truth = {}
    for i, (pixels, label) in enumerate(zip(split.test_images[:40], split.test_labels[:40], strict=True)):
        path = folder / ("nested" if i % 2 else "") / f"d{i:03d}.png"
        path.write_bytes(digit_png(pixels))
        truth[str(path)] = int(label)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return folder, truth


def test_score_writes_one_line_per_image_and_survives_bad_files(
    model_store: dict[str, str], digit_folder: tuple[Path, dict[str, int]], tmp_path: Path
) -> None:
    folder, truth = digit_folder
    out = tmp_path / "scores.jsonl"
    result = run("score", "--model", "lenet5", str(folder), "--output", str(out), "--batch-size", "7")
    assert "scored 40, failed 1" in result.stdout
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 41 and len({r["path"] for r in lines}) == 41
    errors = [r for r in lines if "error" in r]
    assert [Path(r["path"]).name for r in errors] == ["broken.png"]
    correct = [int(r["predictions"][0]["label"]) == truth[r["path"]] for r in lines if "error" not in r]
    assert np.mean(correct) >= 0.95
    assert all(r["model"] == "lenet5" and len(r["predictions"]) == 5 for r in lines if "error" not in r)


def test_score_resume_skips_done_images_and_repairs_a_torn_line(
    model_store: dict[str, str], digit_folder: tuple[Path, dict[str, int]], tmp_path: Path
) -> None:
    folder, _ = digit_folder
    out = tmp_path / "scores.jsonl"
    run("score", "--model", "lenet5", str(folder), "--output", str(out))
    full = out.read_text().splitlines()
    # Simulate a run killed mid-write: keep 10 lines and half of the 11th.
    out.write_text("\n".join(full[:10]) + "\n" + full[10][: len(full[10]) // 2])
    result = run("score", "--model", "lenet5", str(folder), "--output", str(out), "--resume")
    assert "skipped 10" in result.stdout
    resumed = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["path"] for r in resumed) == sorted(json.loads(line)["path"] for line in full)


def test_score_answer_equals_the_http_answer(model_store: dict[str, str], server, tmp_path: Path) -> None:
    image = tmp_path / "seven.png"
    split = digits_split()
    image.write_bytes(digit_png(split.test_images[int(np.argmax(split.test_labels == 7))]))
    out = tmp_path / "one.jsonl"
    run("score", "--model", "lenet5", str(image), "--output", str(out), "--top-k", "3")
    (line,) = [json.loads(x) for x in out.read_text().splitlines()]
    http = requests.post(
        f"{server.url}/classify",
        files={"image": image.read_bytes()},
        data={"model": "lenet5", "top_k": "3"},
        timeout=30,
    ).json()
    assert line.pop("path") == str(image)
    assert line["model"] == http["model"]
    assert [p["index"] for p in line["predictions"]] == [p["index"] for p in http["predictions"]]
    np.testing.assert_allclose(
        [p["score"] for p in line["predictions"]], [p["score"] for p in http["predictions"]], atol=1e-6
    )


def test_score_embeddings_go_to_parquet_as_one_fixed_size_list_column(
    model_store: dict[str, str], digit_folder: tuple[Path, dict[str, int]], server, tmp_path: Path
) -> None:
    """`--task embed`: what a vector store loads — a float32 fixed-size list column, one row per image, null for a
    file that cannot be read; the same vectors as `/embed`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder, _ = digit_folder
    out = tmp_path / "vectors.parquet"
    result = run("score", "--model", "cae", "--task", "embed", str(folder), "--output", str(out), "--batch-size", "16")
    assert "scored 40, failed 1" in result.stdout
    table = pq.read_table(out)
    dim = len(requests.post(
        f"{server.url}/embed", files={"image": digit_png(digits_split().test_images[0])}, data={"model": "cae"}
    ).json()["embedding"])  # fmt: skip
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), dim)
    rows = {row["path"]: row for row in table.to_pylist()}
    assert len(rows) == 41 and rows[str(folder / "broken.png")]["embedding"] is None
    path = next(p for p in rows if p.endswith("d000.png"))
    http = requests.post(
        f"{server.url}/embed", files={"image": Path(path).read_bytes()}, data={"model": "cae"}, timeout=30
    ).json()
    np.testing.assert_allclose(rows[path]["embedding"], http["embedding"], atol=1e-6)
    assert "embedding" not in json.loads(rows[path]["answer"])  # the vector is its own column, not in the JSON
    # JSONL: the same answer as one field
    lines = tmp_path / "vectors.jsonl"
    run("score", "--model", "cae", "--task", "embed", path, "--output", str(lines))
    (line,) = [json.loads(x) for x in lines.read_text().splitlines()]
    assert line["dim"] == dim and np.allclose(line["embedding"], http["embedding"], atol=1e-6)
    assert "reconstruction" not in line and "score" not in line  # only the task asked for


def test_score_default_tasks_and_a_task_that_does_not_fit(model_store: dict[str, str], tmp_path: Path) -> None:
    image = tmp_path / "d.png"
    image.write_bytes(digit_png(digits_split().test_images[0]))
    out = tmp_path / "o.jsonl"
    run("score", "--model", "lenet5", str(image), "--output", str(out))
    (line,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert "predictions" in line and "embedding" not in line  # embeddings only when asked for
    wrong = run("score", "--model", "lenet5", "--task", "denoise", str(image), "--output", str(out), check=False)
    assert wrong.returncode == 2 and "does not answer for classification models" in wrong.stderr
    none = run("score", "--model", "cvae", str(image), "--output", str(out), check=False)
    assert none.returncode == 2 and "takes no image files to score" in none.stderr


def test_score_unknown_model_is_a_clear_error(tmp_path: Path) -> None:
    result = run("score", "--model", "nonexistent", str(tmp_path), "--output", str(tmp_path / "o.jsonl"), check=False)
    assert result.returncode == 2 and "not in the model store" in result.stderr


def test_bench_runtime_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run(
        "bench", "runtime", "--model", "lenet5", "--batch", "1", "--batch", "4", "--precision", "fp32",
        "--precision", "int8", "--repeats", "3", "--output", str(out),
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert result["model"] == "lenet5"
    timed = [r for r in result["results"] if "median_ms" in r]
    assert {(r["runtime"], r["batch"]) for r in timed} == {
        (rt, b) for rt in ("pytorch-eager", "onnxruntime-cpu", "onnxruntime-cpu-int8") for b in (1, 4)
    }
    assert all(r["median_ms"] > 0 and r["images_per_s"] > 0 for r in timed)
    assert {r["batch"] for r in result["results"] if "ratio" in r} == {1, 4}
    assert result["quality"]["int8"]["metric"] == "top5_overlap"


def test_bench_suite_writes_results_table_and_plots(tmp_path: Path) -> None:
    """The in-process parts of `cnnserve bench` (the served and peer parts are in the slow run of the suite). A
    partial run writes beside the committed results (bench-results/ where it runs), never over them."""
    committed = ROOT / "benchmarks"
    before = {p.name: p.read_bytes() for p in committed.iterdir() if p.is_file()}
    out = tmp_path / "bench-results"
    done = run(
        "bench", "--model", "lenet5", "--families", "lenet5", "--batches", "1,4", "--repeats", "2",
        "--parts", "families,runtime", cwd=tmp_path,
    )  # fmt: skip
    assert "bench-results/RESULTS.md" in done.stdout
    assert {p.name: p.read_bytes() for p in committed.iterdir() if p.is_file()} == before
    result = json.loads((out / "results.json").read_text())
    assert set(result["families"]) == {"lenet5"}
    assert {(r["runtime"], r["batch"]) for r in result["runtime"] if "median_ms" in r} == {
        (rt, b) for rt in ("pytorch-eager", "onnxruntime-cpu", "onnxruntime-cpu-int8") for b in (1, 4)
    }
    assert result["prepost_ms"] > 0 and result["machine"]["cores_usable"] >= 1
    statuses = {t["name"]: t["status"] for t in result["targets"]}
    assert statuses["served fp32 / FastAPI + PyTorch peer, 16 clients"] == "not measured"
    assert statuses["onnxruntime fp32 / eager, batch 1, lenet5"] in ("met", "missed")
    report = (out / "RESULTS.md").read_text()
    assert "## Targets" in report and "| lenet5 |" in report and "load average" in report
    assert (out / "throughput_vs_batch.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = run("bench", "--parts", "everything", check=False)
    assert bad.returncode == 2 and "unknown part" in bad.stderr


def test_score_detection_equals_the_http_answer(model_store: dict[str, str], server, tmp_path: Path) -> None:
    """A detector through `cnnserve score`: boxes in each file's own pixels, the same as `/detect` answers."""
    from cnnserve.export.demos.shapes import HELD_OUT_SEED, make_dataset
    from PIL import Image

    folder = tmp_path / "scenes"
    folder.mkdir()
    for i, sample in enumerate(make_dataset(8, seed=HELD_OUT_SEED + 3)):
        image = Image.fromarray(sample.image)
        (image if i % 2 else image.resize((256, 192))).save(folder / f"scene{i}.png")  # sizes differ from 128×128
    out = tmp_path / "detections.jsonl"
    result = run("score", "--model", "yolov1_shapes", str(folder), "--output", str(out), "--batch-size", "3")
    assert "scored 8, failed 0" in result.stdout
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 8 and sum(len(line["detections"]) for line in lines) >= 8
    for line in lines:
        path = Path(line.pop("path"))
        http = requests.post(
            f"{server.url}/detect", files={"image": path.read_bytes()}, data={"model": "yolov1_shapes"}, timeout=30
        ).json()
        assert {k: line[k] for k in ("model", "width", "height")} == {k: http[k] for k in ("model", "width", "height")}
        assert (line["width"], line["height"]) == Image.open(path).size
        assert [d["label"] for d in line["detections"]] == [d["label"] for d in http["detections"]]
        assert set(d["label"] for d in line["detections"]) <= {"circle", "square", "triangle"}
        np.testing.assert_allclose(
            [d["box"] for d in line["detections"]], [d["box"] for d in http["detections"]], atol=0.05
        )
        np.testing.assert_allclose(
            [d["score"] for d in line["detections"]], [d["score"] for d in http["detections"]], atol=1e-5
        )


@pytest.mark.slow
def test_bench_suite_serves_and_drives_the_peer(tmp_path: Path) -> None:
    """The HTTP parts: `bentoml serve` and the FastAPI + PyTorch peer started by the benchmark, driven, stopped."""
    out = tmp_path / "bench"
    run(
        "bench", "--model", "resnet18", "--parts", "served,peer", "--clients", "1,2", "--duration", "2",
        "--output-dir", str(out),
    )  # fmt: skip
    result = json.loads((out / "results.json").read_text())
    for key in ("served", "served_int8", "peer"):
        assert [row["clients"] for row in result[key]] == [1, 2]
        assert all(row["requests"] > 0 and row["errors"] == 0 for row in result[key]), result[key]
    assert all(row["mean_batch"] >= 1 for row in result["served"])  # read from the service's /metrics
    assert "mean_batch" not in result["peer"][0]
    assert (out / "throughput_vs_clients.png").is_file()


def test_tune_measures_a_store_model_and_the_service_reads_it(model_store: dict[str, str], tmp_path: Path) -> None:
    profiles, defaults = tmp_path / "batching.json", tmp_path / "defaults.json"
    other = {"family": "yolo", "model": "yolov1_shapes", "precision": "fp32", "provider": "CPUExecutionProvider"}
    other |= {"device": "AMD EPYC", "threads": 2, "budget_ms": 100.0, "measured_at": "then", "curve": [[1, 1.0]]}
    defaults.write_text(json.dumps({"about": "measured on our CI machine", "entries": [other]}))
    out = run(
        "tune", model_store["cae"], "--profiles", str(profiles), "--budget-ms", "20", "--defaults", str(defaults)
    ).stdout
    assert "== cae (fp32, CPUExecutionProvider)" in out and "batch limit" in out
    (entry,) = json.loads(profiles.read_text())["profiles"]
    assert entry["family"] == "cae" and entry["provider"] == "CPUExecutionProvider" and entry["curve"][0][0] == 1
    merged = json.loads(defaults.read_text())  # the curve joins the others; the file still says where it was measured
    assert merged["about"] == "measured on our CI machine" and other in merged["entries"]
    assert [e["curve"] for e in merged["entries"] if e["model"] == "cae"] == [entry["curve"]]

    from cnnserve.service.runtime.model import load_model
    from cnnserve.service.runtime.tuning import policy_for_model
    from cnnserve.service.settings import Settings
    from cnnserve.service.store import resolve_model_file

    model = load_model(*resolve_model_file(model_store["cae"]), providers=["CPUExecutionProvider"])
    limit = policy_for_model(model, Settings(tiers="one", batch_profiles=str(profiles), batch_budget_ms=20))
    assert limit.source == "measured" and f"batch limit {limit.max_batch_size} " in out

    not_ours = tmp_path / "plain.onnx"
    not_ours.write_bytes(b"\x08\x07")
    failed = run("tune", str(not_ours), "--profiles", str(profiles), check=False)
    assert failed.returncode == 2 and "error: model 'plain' is not ready" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_missing_only_exports_demos_again_when_their_weights_changed(
    model_store: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make serve` runs `export --defaults --missing-only`: after a pull brings new demo weights, the store's copy
    made from the old ones must not count as present."""
    import bentoml
    from cnnserve.export import weights

    from cnnserve import cli

    shipped = weights.demo_digest("lenet5")
    assert shipped is not None and len(shipped) == 64
    assert bentoml.models.get(model_store["lenet5"]).info.metadata["weights_sha256"] == shipped
    assert cli._store_state(model_store["lenet5"], demo_of="lenet5") == "current"
    assert cli._store_state(model_store["resnet18"]) == "current"  # not a demo: any entry counts
    assert cli._store_state("no_such_model") == "missing"
    assert cli._store_state(model_store["broken"]) == "current"  # a file is there; serving reports it broken
    monkeypatch.setattr(weights, "demo_digest", lambda name: "0" * 64)  # the checkout's weights are other ones
    assert cli._store_state(model_store["lenet5"], demo_of="lenet5") == "stale"
