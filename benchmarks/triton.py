"""``cnnserve bench triton``: Triton's own ``perf_analyzer`` against the service's Open Inference Protocol, over
HTTP (``/v2``) and gRPC, for one classifier at a few concurrencies; results to ``benchmarks/triton/``.

What it runs: a fresh ``bentoml serve`` (one tier, gRPC on a free port) with a private model store holding
LeNet-5's uint8-input export (``lenet5-u8``: every byte of perf_analyzer's random input data is a valid pixel, see
below), then ``perf_analyzer -m lenet5-u8 --concurrency-range C:C`` per protocol and level, each with
perf_analyzer's own stabilisation (``--measurement-interval``, ``--stability-percentage``). perf_analyzer reads the
model's metadata, configuration and statistics from the service, so a run also checks those routes the way Triton's
tools use them; its server-side figures (inferences vs onnxruntime runs) show the batching.

**Getting perf_analyzer.** The PyPI ``perf-analyzer`` wheels need glibc 2.38, and its 0.1.0 is an empty placeholder;
``tritonclient==2.51.0[all]``'s wheel still carries a ``perf_analyzer`` binary that runs on glibc 2.36 given
``libcudart.so.12`` (PyPI ``nvidia-cuda-runtime-cu12``) and ``libb64.so.0d`` (Debian ``libb64-0d``) on
``LD_LIBRARY_PATH``. :func:`perf_analyzer` makes that, once, in its own virtual environment (``--venv``, default
``~/.cache/cnnserve/perf-analyzer``) — never in the project's: it is a client tool, not a serving dependency — and
unpacks Debian's package into it with ``apt-get download`` + ``dpkg -x`` (no root needed) when the system lacks the
library.

**Random input data and NaN.** perf_analyzer's default input data is random bytes. For a uint8 input those are
pixels; for a float32 input they are arbitrary floats, NaN and infinity among them, which this service refuses
(400: ``service/app/oip.py``). Against a float32 export pass ``--input-data zero`` or a JSON data file.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["perf_analyzer", "run_perf_analyzer", "triton_benchmark"]

ROOT = Path(__file__).resolve().parent.parent
PA_PACKAGES = ("tritonclient[all]==2.51.0", "nvidia-cuda-runtime-cu12")
DEFAULT_VENV = Path.home() / ".cache" / "cnnserve" / "perf-analyzer"


def _run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs)


def perf_analyzer(venv: Path = DEFAULT_VENV, log: Callable[[str], None] = print) -> tuple[Path, dict[str, str]]:
    """perf_analyzer's path and the environment it runs in; makes its virtual environment on first use."""
    binary = venv / "bin" / "perf_analyzer"
    if not binary.is_file():
        log(f"perf_analyzer: creating {venv} ({', '.join(PA_PACKAGES)})")
        created = _run([sys.executable, "-m", "venv", str(venv)])
        if created.returncode != 0:
            raise RuntimeError(f"could not create {venv}: {created.stderr[-2000:]}")
        installed = _run([str(venv / "bin" / "pip"), "install", "-q", *PA_PACKAGES], timeout=1800)
        if installed.returncode != 0 or not binary.is_file():
            raise RuntimeError(f"could not install {' '.join(PA_PACKAGES)}: {installed.stderr[-2000:]}")
    libraries = [str(p.parent) for p in venv.rglob("libcudart.so.12")][:1]
    if not libraries:
        raise RuntimeError(f"libcudart.so.12 is missing from {venv}; pip install nvidia-cuda-runtime-cu12 there")
    if not _system_has("libb64.so.0d"):
        libraries.append(str(_libb64(venv / "libb64", log)))
    env = {**os.environ, "LD_LIBRARY_PATH": ":".join([*libraries, os.environ.get("LD_LIBRARY_PATH", "")]).rstrip(":")}
    missing = [
        line.split()[0] for line in _run(["ldd", str(binary)], env=env).stdout.splitlines() if "not found" in line
    ]
    if missing:
        raise RuntimeError(f"perf_analyzer still lacks {', '.join(missing)}")
    return binary, env


def _system_has(library: str) -> bool:
    return library in _run(["ldconfig", "-p"]).stdout


def _libb64(folder: Path, log: Callable[[str], None]) -> Path:
    """Debian's libb64-0d unpacked into ``folder`` (``apt-get download`` needs no root; ``dpkg -x`` neither)."""
    found = list(folder.rglob("libb64.so.0d"))
    if found:
        return found[0].parent
    folder.mkdir(parents=True, exist_ok=True)
    log("perf_analyzer: fetching Debian's libb64-0d")
    downloaded = _run(["apt-get", "download", "libb64-0d"], cwd=folder, timeout=300)
    debs = list(folder.glob("libb64-0d_*.deb"))
    if not debs:
        raise RuntimeError(f"apt-get download libb64-0d failed: {downloaded.stderr[-2000:]}")
    _run(["dpkg", "-x", str(debs[0]), str(folder / "root")], check=True)
    return next((folder / "root").rglob("libb64.so.0d")).parent


_SERVER = re.compile(r"Inference count: (\d+)\s+Execution count: (\d+)\s+Successful request count: (\d+)")


def run_perf_analyzer(
    binary: Path,
    env: dict[str, str],
    *,
    model: str,
    url: str,
    protocol: str,
    concurrency: int,
    interval_ms: int = 5000,
    stability: int = 50,
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    """One perf_analyzer measurement at one concurrency: client throughput and latencies, server-side counts."""
    with tempfile.TemporaryDirectory(prefix="perf-analyzer-") as tmp:
        report = Path(tmp) / "report.csv"
        cmd = [
            str(binary),
            "-m",
            model,
            "-u",
            url,
            "-i",
            protocol,
            "--concurrency-range",
            f"{concurrency}:{concurrency}",
            "--measurement-interval",
            str(interval_ms),
            "--stability-percentage",
            str(stability),
            "-f",
            str(report),
            *extra,
        ]
        done = _run(cmd, env=env, timeout=600)
        if done.returncode != 0 or not report.is_file():
            raise RuntimeError(f"perf_analyzer failed ({' '.join(cmd)}):\n{(done.stdout + done.stderr)[-3000:]}")
        (row,) = list(csv.DictReader(report.open()))
    server = _SERVER.search(done.stdout)
    inferences, executions, successes = (int(v) for v in server.groups()) if server else (0, 0, 0)
    return {
        "protocol": protocol,
        "concurrency": concurrency,
        "infer_per_s": round(float(row["Inferences/Second"]), 1),
        "p50_ms": round(int(row["p50 latency"]) / 1000, 2),
        "p99_ms": round(int(row["p99 latency"]) / 1000, 2),
        "server_inferences": inferences,
        "server_runs": executions,
        "server_requests": successes,
        "images_per_run": round(inferences / executions, 2) if executions else None,
        "server_queue_us": int(row["Server Queue"]),
        "server_compute_infer_us": int(row["Server Compute Infer"]),
        "command": " ".join(["perf_analyzer", *cmd[1 : cmd.index("-f")], *extra]),
    }


def _serve(home: Path, model: str, port: int, grpc_port: int, log_file: Path) -> subprocess.Popen:
    import requests

    env = {
        **os.environ,
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "true",
        "CNNSERVE_MODELS": model,
        "CNNSERVE_TIERS": "one",
        "CNNSERVE_ACCESS_LOG": "false",
        "CNNSERVE_GRPC_PORT": str(grpc_port),
        "CNNSERVE_GRPC_HOST": "127.0.0.1",
        "CNNSERVE_ORT_CACHE_DIR": str(home / "ort-cache"),
    }
    out = log_file.open("wb")
    cmd = [sys.executable, "-m", "bentoml", "serve", "--port", str(port), "--host", "127.0.0.1"]
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bentoml serve exited:\n{log_file.read_text()[-3000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return process
        except requests.RequestException:
            pass
        time.sleep(0.5)
    _stop(process)
    raise RuntimeError(f"bentoml serve did not become ready:\n{log_file.read_text()[-3000:]}")


def _stop(process: subprocess.Popen) -> None:
    import contextlib
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _store(home: Path, name: str) -> str:
    """The demo LeNet-5 exported with uint8 input into a private store (a subprocess: BENTOML_HOME is read once)."""
    code = (
        "import sys; from cnnserve.export import export_model\n"
        "print(export_model(sys.argv[1], weights='demo', input_dtype='uint8').tag)\n"
    )
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    done = _run([sys.executable, "-c", code, name], cwd=ROOT, env=env, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"export of {name} failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1].split(":")[0]


def _markdown(result: dict[str, Any]) -> str:
    rows = [
        f"| {r['protocol']} | {r['concurrency']} | {r['infer_per_s']:,} | {r['p50_ms']} | {r['p99_ms']} | "
        f"{r['images_per_run']} |"
        for r in result["runs"]
    ]
    return "\n".join(
        [
            "# perf_analyzer against cnnserve's Open Inference Protocol",
            "",
            f"`{result['command']}` — {result['model']} (uint8 input, CPU, one tier), perf_analyzer "
            f"{result['perf_analyzer']}, {result['measured_at']}, {result['machine']}, load average "
            f"{result['load_average_before']} before the run.",
            "",
            "| protocol | concurrency | inferences/s | p50 ms | p99 ms | images per onnxruntime run |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            "Client figures are perf_analyzer's own (its stabilised measurement window); images per run are from the",
            "server's statistics that perf_analyzer reads (inference count / execution count): above 1, concurrent",
            "requests shared onnxruntime runs. The machine is shared; ratios within one run are what to compare.",
            "",
        ]
    )


def triton_benchmark(
    *,
    model: str = "lenet5",
    levels: tuple[int, ...] = (1, 8),
    protocols: tuple[str, ...] = ("http", "grpc"),
    interval_ms: int = 5000,
    venv: Path = DEFAULT_VENV,
    output: Path = ROOT / "benchmarks" / "triton" / "results.json",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Serve ``model``'s uint8 export, run perf_analyzer per protocol and level, write results.json + RESULTS.md."""
    binary, env = perf_analyzer(venv, log)
    probe = "import importlib.metadata as m; print(m.version('tritonclient'))"
    pa_version = _run([str(venv / "bin" / "python"), "-c", probe]).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="cnnserve-triton-bench-") as tmp:
        home = Path(tmp) / "bentoml"
        log(f"== exporting {model} (uint8 input) into a private store")
        served = _store(home, model)
        port, grpc_port = _free_port(), _free_port()
        process = _serve(home, served, port, grpc_port, Path(tmp) / "serve.log")
        load = os.getloadavg()
        runs = []
        try:
            for protocol in protocols:
                url = f"127.0.0.1:{grpc_port}" if protocol == "grpc" else f"127.0.0.1:{port}"
                for concurrency in levels:
                    log(f"== perf_analyzer -i {protocol} --concurrency-range {concurrency}:{concurrency}")
                    run = run_perf_analyzer(
                        binary, env, model=served, url=url, protocol=protocol, concurrency=concurrency,
                        interval_ms=interval_ms,
                    )  # fmt: skip
                    log(
                        f"   {run['infer_per_s']:,} infer/s, p50 {run['p50_ms']} ms, p99 {run['p99_ms']} ms, "
                        f"{run['images_per_run']} images per run"
                    )
                    runs.append(run)
        finally:
            _stop(process)
    result = {
        "model": served,
        "command": f"cnnserve bench triton --model {model} --levels {','.join(map(str, levels))}",
        "perf_analyzer": f"tritonclient {pa_version}'s binary",
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_average_before": [round(v, 2) for v in load],
        "runs": runs,
    }
    for protocol in protocols:
        by_level = {r["concurrency"]: r["infer_per_s"] for r in runs if r["protocol"] == protocol}
        for level, value in by_level.items():
            result[f"{protocol}_infer_per_s_c{level}"] = value
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    (output.parent / "RESULTS.md").write_text(_markdown(result))
    return result
