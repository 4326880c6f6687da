"""``cnnserve bench``: the one benchmark — onnxruntime (fp32, int8) vs PyTorch eager, the served endpoint vs a
plain FastAPI + PyTorch-eager peer, in one run on one machine, with the issue's targets as measured ratios.

Timings on shared machines are noisy, so everything that is compared is measured in the same run, with warm-up
first, and the in-process runtimes in alternation (one call each per round); the ratios are what the targets are
about. :func:`run_suite` writes ``results.json``,
``RESULTS.md`` (tables, targets met or missed, machine info and its load while running) and two plots
(throughput vs batch size, throughput vs concurrent clients) into ``benchmarks/``.

Parts of the suite:

* **runtime** — every classifier family at batch 1 (onnxruntime fp32 vs eager), and the main model (ResNet-50)
  at batch 1/8/32 in onnxruntime fp32 and int8 and PyTorch eager. onnxruntime uses the service's own session
  options (``service.session_options``) and the same threads as torch.
* **served** — ``bentoml serve`` started here on a free port with a temporary model store holding the main
  model's fp32 and int8 exports, driven by ``cnnserve.loadtest.run_load`` at 1/4/16/32 concurrent clients with a
  JPEG photo; the peer (``benchmarks/peers/torch_server.py``) is driven the same way.
* **pre/post-processing** — decode + resize of the same JPEG by the service's code, to compare the served latency
  at one client with the raw model's.

:func:`bench_model` is the single-model comparison (``cnnserve bench runtime``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["bench_model", "run_suite", "default_families", "TARGETS"]

ROOT = Path(__file__).resolve().parent.parent
PEER = ROOT / "benchmarks" / "peers" / "torch_server.py"


# The smallest member of each classifier family (VGG is left out of the default run: 7.6 GFLOPs per image).
def default_families() -> tuple[str, ...]:
    """Every classifier family's representative, asked of the registry; VGG (one image takes a few hundred ms on
    a small CPU, and the family is plain convolutions) is left to ``--families`` when wanted."""
    from cnnserve.models import get_spec, representatives

    return tuple(n for n in representatives("classification") if get_spec(n).family != "vgg")


TARGETS = {
    "ort_fp32_vs_eager_b1": 1.3,  # every classifier family, batch 1
    "int8_vs_fp32_b8": 2.5,  # ResNet-50, batch 8
    "served_vs_raw_best": 0.9,  # served fp32 at 16 clients vs raw onnxruntime's best batched images/s
    "served_p50_vs_raw_b1_plus_prepost": 1.15,  # at most
    "served_vs_peer_16": 1.5,  # fp32, 16 clients
    "served_int8_vs_peer_16": 4.0,
}


def _time(fn: Callable[[], object], *, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _time_interleaved(runners: dict[str, Callable[[], object]], *, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Time several runtimes in alternation (one call each per round, the order rotating), so a change in the
    machine's load during the measurement hits all of them alike instead of whichever ran at that moment."""
    names = list(runners)
    for name in names:
        for _ in range(warmup):
            runners[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            runners[name]()
            times[name].append(time.perf_counter() - start)
    return times


def _row(runtime: str, batch: int, times: list[float], **extra: Any) -> dict[str, Any]:
    import numpy as np

    median = statistics.median(times)
    return {
        "runtime": runtime,
        "batch": batch,
        "median_ms": round(median * 1000, 3),
        "p90_ms": round(float(np.percentile(times, 90)) * 1000, 3),
        "images_per_s": round(batch / median, 1),
        **extra,
    }


def _ort_session(path: Path, threads: int):
    import onnxruntime as ort
    from cnnserve.service.runtime.sessions import SessionConfig

    options = SessionConfig(intra_op_threads=threads).options()
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _repeats_for(batch: int, repeats: int) -> int:
    return max(3, repeats // max(1, batch // 4))  # big batches take long: fewer repeats, same wall time order


def bench_model(
    name: str,
    *,
    batch_sizes: tuple[int, ...] = (1, 8),
    repeats: int = 20,
    warmup: int = 3,
    threads: int = 0,
    precisions: tuple[str, ...] = ("fp32",),
    eager: bool = True,
    output: Path | None = None,
    files_dir: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Median latency and images/s for onnxruntime (CPU; each of ``precisions``) and PyTorch eager, per batch.
    The exported files are kept in ``files_dir`` (``NAME-PRECISION.onnx``) when given."""
    import onnxruntime as ort
    import torch
    from cnnserve.export import export_model
    from cnnserve.export.parity import parity_batch
    from cnnserve.export.wrappers import wrap_for_export
    from cnnserve.models import build_model, get_spec
    from cnnserve.service.runtime.sessions import available_cores

    spec = get_spec(name)
    threads = threads or available_cores()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    module, _ = wrap_for_export(build_model(name).eval(), spec)
    rows: list[dict[str, Any]] = []
    quality: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cnnserve-bench-") as tmp:
        sessions = {}
        for precision in precisions:
            path = Path(files_dir or tmp) / f"{name}-{precision}.onnx"
            result = export_model(name, weights="random", precision=precision, output=path, save=False)
            if result.quality is not None:
                quality[precision] = result.quality
            sessions[precision] = _ort_session(path, threads)
        for batch in batch_sizes:
            images = parity_batch(spec.in_channels, spec.input_size, batch=batch, seed=1)
            n = _repeats_for(batch, repeats)
            runners: dict[str, Callable[[], object]] = {}
            if eager:
                runners["pytorch-eager"] = lambda: module(images)  # noqa: B023
            for precision, session in sessions.items():
                feed = {session.get_inputs()[0].name: images.numpy()}
                label = "onnxruntime-cpu" if precision == "fp32" else f"onnxruntime-cpu-{precision}"
                runners[label] = lambda session=session, feed=feed: session.run(None, feed)
            with torch.inference_mode():
                timed = _time_interleaved(runners, repeats=n, warmup=warmup)
            rows += [_row(runtime, batch, times) for runtime, times in timed.items()]
            if eager and "onnxruntime-cpu" in timed:
                ratio = statistics.median(timed["pytorch-eager"]) / statistics.median(timed["onnxruntime-cpu"])
                rows.append({"runtime": "speedup onnxruntime/pytorch", "batch": batch, "ratio": round(ratio, 3)})
            for row in rows[-len(timed) - 1 :]:
                log(_format_row(name, row))
    result = {
        "model": name,
        "weights": "random (seed 0)",
        "input": [spec.in_channels, *spec.input_size],
        "repeats": repeats,
        "warmup": warmup,
        "threads": threads,
        "machine": _machine(),
        "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__},
        "results": rows,
        "quality": quality,
    }
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _format_row(name: str, row: dict[str, Any]) -> str:
    if "ratio" in row:
        return f"  {name:<16} batch {row['batch']:>3}  onnxruntime is {row['ratio']:.2f}× PyTorch eager"
    return (
        f"  {name:<16} {row['runtime']:<24} batch {row['batch']:>3}  median {row['median_ms']:>9.2f} ms"
        f"  p90 {row['p90_ms']:>9.2f} ms  {row['images_per_s']:>8.1f} img/s"
    )


# --- machine ------------------------------------------------------------------------------------------------------


def _machine() -> dict[str, Any]:
    from cnnserve.service.runtime.sessions import available_cores

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    memory_gb = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        memory_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {
        "cpu": cpu,
        "cores_usable": available_cores(),
        "cpu_count": os.cpu_count(),
        "memory_gb": memory_gb,
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def _load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


# --- servers ------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, process: subprocess.Popen, log_file: Path, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}:\n{log_file.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready in {timeout:.0f} s:\n{log_file.read_text()[-3000:]}")


def _start(command: list[str], env: dict[str, str], ready_url: str, log_file: Path) -> subprocess.Popen:
    out = log_file.open("wb")
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_ready(ready_url, process, log_file)
    except Exception:
        _stop(process)
        raise
    return process


def _stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def _store_models(home: Path, files: dict[str, Path], task: str) -> None:
    """Save already exported files into a fresh BentoML store (a subprocess: BENTOML_HOME is read at import)."""
    code = (
        "import json, sys; from pathlib import Path; from cnnserve.export.store import save_to_store\n"
        "for tag, path in json.loads(sys.argv[1]).items():\n"
        "    save_to_store(Path(path), name=tag, task=sys.argv[2], metadata={'model': tag})\n"
    )
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    mapping = json.dumps({tag: str(path) for tag, path in files.items()})
    subprocess.run([sys.executable, "-c", code, mapping, task], cwd=ROOT, env=env, check=True, capture_output=True)


def _photo_jpeg() -> bytes:
    """The request image: scikit-image's astronaut (512×512 RGB) as a quality-90 JPEG (~60 kB)."""
    import skimage.data
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _prepost_ms(spec: dict, data: bytes, repeats: int = 30) -> float:
    """Median ms of what the service does around the model for one upload: decode, resize/crop, top-k."""
    import numpy as np
    from cnnserve.service.contract import ModelContract
    from cnnserve.service.imaging import decode_image, preprocess

    pre = ModelContract.model_validate(spec).preprocess
    probs = np.random.default_rng(0).random(1000, dtype=np.float32)

    def once() -> None:
        preprocess(decode_image(data), pre)
        np.argpartition(-probs, 5)[:5]

    return statistics.median(_time(once, repeats=repeats, warmup=3)) * 1000


def _load_levels(
    url: str, model: str | None, image: bytes, clients: tuple[int, ...], duration: float, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    from .loadtest import run_load

    rows = []
    for c in clients:
        fields = {"model": model} if model else {}
        before = _batch_counters(url, model)
        result = run_load(url, image=image, route="/classify", fields=fields, concurrency=c, duration=duration, log=log)
        after = _batch_counters(url, model)
        row = {
            "clients": c,
            "requests_per_s": result["requests_per_s"],
            "p50_ms": result["latency_ms"]["p50"],
            "p95_ms": result["latency_ms"]["p95"],
            "p99_ms": result["latency_ms"]["p99"],
            "requests": result["requests"],
            "errors": result["errors"],
        }
        if before and after and after[1] > before[1]:  # the service's own counters: images and onnxruntime calls
            row["mean_batch"] = round((after[0] - before[0]) / (after[1] - before[1]), 2)
            row["model_busy"] = round((after[2] - before[2]) / result["duration_s"], 2)  # onnxruntime s per s
        rows.append(row)
    return rows


def _served_batching(url: str) -> dict[str, Any]:
    """Each served model's batch limit and where it came from, as the service reports it in ``/models``."""
    import httpx

    models = httpx.get(f"{url}/models", timeout=10).json()["models"]
    return {
        m["name"]: {k: m["batching"].get(k) for k in ("max_batch_size", "source", "reference", "measured_on")}
        for m in models
        if m.get("batching")
    }


def _batch_counters(url: str, model: str | None) -> tuple[float, float, float] | None:
    """(images, onnxruntime calls, onnxruntime seconds) so far for ``model``, from the service's ``/metrics``;
    None for a server without them (the peer)."""
    import httpx

    if model is None:
        return None
    wanted = {
        f'cnnserve_batch_size_sum{{model="{model}"}}': 0,
        f'cnnserve_batch_size_count{{model="{model}"}}': 1,
        f'cnnserve_batch_seconds_sum{{model="{model}"}}': 2,
    }
    values = [0.0, 0.0, 0.0]
    try:
        text = httpx.get(f"{url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key in wanted:
            values[wanted[key]] = float(value)
    return values[0], values[1], values[2]


# --- the suite ----------------------------------------------------------------------------------------------------


def run_suite(
    *,
    model: str = "resnet50",
    families: tuple[str, ...] | None = None,
    batch_sizes: tuple[int, ...] = (1, 8, 32),
    clients: tuple[int, ...] = (1, 4, 16, 32),
    duration: float = 15.0,
    repeats: int = 10,
    output_dir: Path = ROOT / "benchmarks",
    parts: tuple[str, ...] = ("runtime", "families", "served", "peer"),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the benchmark; writes ``results.json``, ``RESULTS.md`` and the PNG plots into ``output_dir``."""
    import onnxruntime as ort
    import torch
    from cnnserve.models import get_spec

    families = default_families() if families is None else families
    output_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc)
    result: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "model": model,
        "machine": _machine(),
        "load_average_start": _load_average(),
        "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__, "python": platform.python_version()},
        "settings": {"batch_sizes": batch_sizes, "clients": clients, "duration_s": duration, "repeats": repeats},
    }
    image = _photo_jpeg()
    spec = get_spec(model)
    with tempfile.TemporaryDirectory(prefix="cnnserve-bench-suite-") as tmp:
        _suite_parts(
            result, Path(tmp), model, spec, image, families, batch_sizes, clients, duration, repeats, parts, log
        )
    result["load_average_end"] = _load_average()
    result["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result["targets"] = evaluate_targets(result)
    (output_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    plots = write_plots(result, output_dir)
    (output_dir / "RESULTS.md").write_text(render_markdown(result, plots))
    for target in result["targets"]:
        log(f"  {target['name']}: {target['value']} (target {target['target']}) {target['status']}")
    return result


def _suite_parts(
    result: dict[str, Any],
    tmp_path: Path,
    model: str,
    spec: Any,
    image: bytes,
    families: tuple[str, ...],
    batch_sizes: tuple[int, ...],
    clients: tuple[int, ...],
    duration: float,
    repeats: int,
    parts: tuple[str, ...],
    log: Callable[[str], None],
) -> None:
    from cnnserve.export import export_model

    if "families" in parts:
        log("== classifier families, batch 1: onnxruntime fp32 vs PyTorch eager")
        result["families"] = {}
        for name in families:
            rows = bench_model(name, batch_sizes=(1,), repeats=repeats, log=log)["results"]
            result["families"][name] = rows
    if "runtime" in parts:
        log(f"== {model}: onnxruntime fp32 / int8 vs PyTorch eager, batch {', '.join(map(str, batch_sizes))}")
        runtime = bench_model(
            model, batch_sizes=batch_sizes, repeats=repeats, precisions=("fp32", "int8"), files_dir=tmp_path, log=log
        )
        result["runtime"] = runtime["results"]
        result["int8_quality"] = runtime["quality"].get("int8")
        result["prepost_ms"] = round(_prepost_ms(spec.to_json_dict(), image), 2)
        log(f"  pre/post-processing (decode JPEG, resize + crop, top-5): {result['prepost_ms']} ms")

    if "served" in parts:
        log(f"== served {model} (bentoml serve), {', '.join(map(str, clients))} clients × {duration:.0f} s")
        files = {}
        for precision, tag in (("fp32", model), ("int8", f"{model}-int8")):
            files[tag] = tmp_path / f"{model}-{precision}.onnx"  # kept by the runtime part when it ran
            if not files[tag].is_file():
                export_model(model, weights="random", precision=precision, output=files[tag], save=False)
        home = tmp_path / "bentoml"
        _store_models(home, files, spec.task)
        port = _free_port()
        env = {
            **os.environ,
            "BENTOML_HOME": str(home),
            "BENTOML_DO_NOT_TRACK": "true",
            "CNNSERVE_MODELS": ",".join(files),
            "CNNSERVE_ORT_CACHE_DIR": str(tmp_path / "ort-cache"),
            "CNNSERVE_GRPC_PORT": "0",  # HTTP only: never contend for 8001 with another server
        }
        server = _start(
            [str(Path(sys.executable).parent / "bentoml"), "serve", "--port", str(port), "--host", "127.0.0.1"],
            env,
            f"http://127.0.0.1:{port}/readyz",
            tmp_path / "serve.log",
        )
        try:
            url = f"http://127.0.0.1:{port}"
            result["served_batching"] = _served_batching(url)
            result["served"] = _load_levels(url, model, image, clients, duration, log)
            log(f"== served {model}-int8")
            result["served_int8"] = _load_levels(url, f"{model}-int8", image, clients, duration, log)
        finally:
            _stop(server)
    if "peer" in parts:
        log(f"== peer: FastAPI + PyTorch eager {model}, one image per request")
        port = _free_port()
        peer = _start(
            [sys.executable, str(PEER), "--model", model, "--port", str(port), "--device", "cpu"],
            {**os.environ},
            f"http://127.0.0.1:{port}/health",
            tmp_path / "peer.log",
        )
        try:
            result["peer"] = _load_levels(f"http://127.0.0.1:{port}", None, image, clients, duration, log)
        finally:
            _stop(peer)


# --- targets, report, plots ---------------------------------------------------------------------------------------


def _median(rows: list[dict[str, Any]], runtime: str, batch: int) -> float | None:
    for row in rows:
        if row.get("runtime") == runtime and row.get("batch") == batch and "median_ms" in row:
            return row["median_ms"]
    return None


def _speedup(rows: list[dict[str, Any]], batch: int) -> float | None:
    """onnxruntime fp32 vs eager at ``batch``, from the unrounded medians (the ``ratio`` row)."""
    for row in rows:
        if row.get("runtime") == "speedup onnxruntime/pytorch" and row.get("batch") == batch:
            return row["ratio"]
    return None


def _at(rows: list[dict[str, Any]] | None, clients: int, key: str) -> float | None:
    for row in rows or []:
        if row["clients"] == clients:
            return row[key]
    return None


def evaluate_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets as ratios from this run: value, target, and met / missed / not measured."""
    targets: list[dict[str, Any]] = []

    def add(name: str, value: float | None, target: float, *, at_most: bool = False, note: str = "") -> None:
        if value is None:
            status = "not measured"
        else:
            status = "met" if (value <= target if at_most else value >= target) else "missed"
        targets.append(
            {
                "name": name,
                "value": None if value is None else round(value, 2),
                "target": f"≤ {target}" if at_most else f"≥ {target}",
                "status": status,
                "note": note,
            }
        )

    for name, rows in result.get("families", {}).items():
        add(f"onnxruntime fp32 / eager, batch 1, {name}", _speedup(rows, 1), TARGETS["ort_fp32_vs_eager_b1"])
    runtime = result.get("runtime", [])
    model = result.get("model", "")
    fp32_b8, int8_b8 = _median(runtime, "onnxruntime-cpu", 8), _median(runtime, "onnxruntime-cpu-int8", 8)
    add(
        f"int8 / fp32 onnxruntime, {model}, batch 8",
        fp32_b8 / int8_b8 if fp32_b8 and int8_b8 else None,
        TARGETS["int8_vs_fp32_b8"],
    )
    best_raw = max(
        (row["images_per_s"] for row in runtime if row.get("runtime") == "onnxruntime-cpu" and "images_per_s" in row),
        default=None,
    )
    served_16 = _at(result.get("served"), 16, "requests_per_s")
    add(
        "served fp32 at 16 clients / raw onnxruntime best batched images/s",
        served_16 / best_raw if served_16 and best_raw else None,
        TARGETS["served_vs_raw_best"],
    )
    raw_b1 = _median(runtime, "onnxruntime-cpu", 1)
    p50_1 = _at(result.get("served"), 1, "p50_ms")
    prepost = result.get("prepost_ms")
    add(
        "served p50 at 1 client / (raw batch 1 + pre/post-processing)",
        p50_1 / (raw_b1 + prepost) if p50_1 and raw_b1 and prepost else None,
        TARGETS["served_p50_vs_raw_b1_plus_prepost"],
        at_most=True,
    )
    peer_16 = _at(result.get("peer"), 16, "requests_per_s")
    add(
        "served fp32 / FastAPI + PyTorch peer, 16 clients",
        served_16 / peer_16 if served_16 and peer_16 else None,
        TARGETS["served_vs_peer_16"],
    )
    served_int8_16 = _at(result.get("served_int8"), 16, "requests_per_s")
    add(
        "served int8 / FastAPI + PyTorch peer, 16 clients",
        served_int8_16 / peer_16 if served_int8_16 and peer_16 else None,
        TARGETS["served_int8_vs_peer_16"],
    )
    return targets


def write_plots(result: dict[str, Any], output_dir: Path) -> list[str]:
    """throughput vs batch size (raw runtimes) and vs concurrent clients (served, peer) as PNG files."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the dev extras bring it; without it the tables still tell the story
        return []
    written = []
    runtime = result.get("runtime", [])
    if runtime:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name in ("pytorch-eager", "onnxruntime-cpu", "onnxruntime-cpu-int8"):
            points = sorted((r["batch"], r["images_per_s"]) for r in runtime if r.get("runtime") == name)
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=name)
        ax.set(xscale="log", xlabel="batch size", ylabel="images / s", title=f"{result['model']}: throughput vs batch")
        ax.set_xticks(
            sorted({r["batch"] for r in runtime}), labels=[str(b) for b in sorted({r["batch"] for r in runtime})]
        )
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(output_dir / "throughput_vs_batch.png", dpi=110)
        plt.close(fig)
        written.append("throughput_vs_batch.png")
    series = {"served fp32": "served", "served int8": "served_int8", "FastAPI + PyTorch eager": "peer"}
    if any(result.get(key) for key in series.values()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, key in series.items():
            rows = result.get(key) or []
            if rows:
                ax.plot([r["clients"] for r in rows], [r["requests_per_s"] for r in rows], marker="o", label=label)
        clients = sorted({r["clients"] for key in series.values() for r in result.get(key) or []})
        ax.set(xscale="log", xlabel="concurrent clients", ylabel="requests / s", title=f"{result['model']}: HTTP")
        ax.set_xticks(clients, labels=[str(c) for c in clients])
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(output_dir / "throughput_vs_clients.png", dpi=110)
        plt.close(fig)
        written.append("throughput_vs_clients.png")
    return written


def render_markdown(result: dict[str, Any], plots: list[str]) -> str:
    machine = result["machine"]
    lines = [
        "# cnnserve benchmark",
        "",
        f"Written by `cnnserve bench` ({result['started']} → {result['finished']} UTC). Rerun it to replace this file.",
        "",
        "## Machine",
        "",
        f"- CPU: {machine['cpu']}; {machine['cores_usable']} usable cores (of {machine['cpu_count']}); "
        f"{machine['memory_gb']} GB RAM; {machine['os']}",
        f"- onnxruntime {result['versions']['onnxruntime']}, torch {result['versions']['torch']}, "
        f"Python {result['versions']['python']}",
        f"- load average (1, 5, 15 min) at start {result['load_average_start']}, at end {result['load_average_end']}: "
        "a start above the core count means other jobs shared the cores, which slows every number and makes the "
        "ratios noisier (the in-process runtimes are timed in alternation to limit that); the end value is mostly "
        "the benchmark's own last part (32 clients and the PyTorch peer's threads).",
        "",
        "## Targets (ratios measured in this run)",
        "",
        "| target | value | goal | status |",
        "|---|---|---|---|",
    ]
    for t in result["targets"]:
        value = "–" if t["value"] is None else f"{t['value']:.2f}"
        lines.append(f"| {t['name']} | {value} | {t['target']} | **{t['status']}** |")
    if result.get("families"):
        lines += [
            "",
            "## Classifier families, batch 1",
            "",
            "| model | PyTorch eager ms | onnxruntime fp32 ms | ratio |",
        ]
        lines.append("|---|---|---|---|")
        for name, rows in result["families"].items():
            eager, ort_, speedup = (
                _median(rows, "pytorch-eager", 1),
                _median(rows, "onnxruntime-cpu", 1),
                _speedup(rows, 1),
            )
            ratio = f"{speedup:.2f}×" if speedup else "–"
            lines.append(f"| {name} | {eager} | {ort_} | {ratio} |")
    if result.get("runtime"):
        lines += [
            "",
            f"## {result['model']} in-process (random weights, 224×224)",
            "",
            "| runtime | batch | median ms | p90 ms | images/s |",
            "|---|---|---|---|---|",
        ]
        for row in result["runtime"]:
            if "median_ms" in row:
                lines.append(
                    f"| {row['runtime']} | {row['batch']} | {row['median_ms']} | {row['p90_ms']} | "
                    f"{row['images_per_s']} |"
                )
        if result.get("prepost_ms") is not None:
            lines += ["", f"Pre/post-processing per upload (decode the 512×512 JPEG, resize + crop, top-5): "
                      f"{result['prepost_ms']} ms."]  # fmt: skip
        quality = result.get("int8_quality")
        if quality:
            lines += [
                "",
                f"int8 vs fp32 on {quality['data']}: top-5 overlap {quality['variant']:.3f}, top-1 agreement "
                f"{quality.get('top1_agreement', float('nan')):.3f}, logit cosine "
                f"{quality.get('logit_cosine', float('nan')):.4f}.",
            ]
    http = [("served fp32", "served"), ("served int8", "served_int8"), ("FastAPI + PyTorch eager peer", "peer")]
    if any(result.get(key) for _, key in http):
        lines += [
            "",
            "## HTTP, one 512×512 JPEG per request (`POST /classify`, closed loop)",
            "",
            "| server | clients | requests/s | p50 ms | p95 ms | p99 ms | errors | images per onnxruntime call | "
            "onnxruntime busy |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for label, key in http:
            for row in result.get(key) or []:
                busy = f"{row['model_busy']:.0%}" if "model_busy" in row else "–"
                lines.append(
                    f"| {label} | {row['clients']} | {row['requests_per_s']} | {row['p50_ms']} | {row['p95_ms']} | "
                    f"{row['p99_ms']} | {row['errors']} | {row.get('mean_batch', '–')} | {busy} |"
                )
        lines += [
            "",
            "The load generator runs on the same cores as the server it measures (for the peer as for ours). "
            "The last two columns come from the service's own `/metrics` (`cnnserve_batch_size`, "
            "`cnnserve_batch_seconds`): how many images each onnxruntime call carried, and the fraction of the "
            "wall time onnxruntime was running.",
            "",
        ]
        for name, b in (result.get("served_batching") or {}).items():
            where = f" ({b['reference']}, measured on {b['measured_on']})" if b.get("reference") else ""
            origin = b["source"] + where
            lines.append(f"- `{name}`: at most {b['max_batch_size']} images per onnxruntime run — {origin}.")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"
