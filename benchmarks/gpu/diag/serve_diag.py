#!/usr/bin/env python3
"""One configuration of the two-tier service under closed-loop load (run from the repository root or a patched copy).

Per concurrency level: served img/s and latency, model-tier CPU per image (psutil over the run), the model tier's
runs in that window from /metrics (runs, images/run, mean seconds/run, real-rows histogram), the model tier's
busiest threads (/proc/PID/task/*/stat), and a stack dump of the model tier mid-load (py-spy --native, else
faulthandler on SIGUSR2 via the diag sitecustomize). Results are written after every level (OUT/NAME.json).

usage: python3 serve_diag.py NAME OUT --model TAG [--levels 16,64] [--duration 5] [--env K=V ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, os.getcwd())
from benchmarks.loadtest import run_load  # noqa: E402
from benchmarks.serve import _process_groups, _profiled_load, test_image  # noqa: E402
from benchmarks.suite import _free_port, _start, _stop  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def metrics(url: str) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("cnnserve_batch_size", "cnnserve_batch_seconds")) and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            key = re.sub(r'model="[^"]*",?', "", key).replace("{}", "")
            out[key] = out.get(key, 0.0) + float(value)
    return out


def thread_ticks(pid: int) -> dict[int, int]:
    ticks = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            ticks[int(task.name)] = int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, ValueError, IndexError):
            pass
    return ticks


def dump_stacks(pid: int, path: Path, log: Path) -> None:
    spy = shutil.which("py-spy")
    if spy:
        r = subprocess.run([spy, "dump", "--native", "--pid", str(pid)], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:  # --native needs more privileges on some kernels: Python frames only
            r = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60)
        path.write_text(r.stdout + r.stderr)
        return
    size = log.stat().st_size if log.exists() else 0
    os.kill(pid, signal.SIGUSR2)  # faulthandler (diag sitecustomize) writes all threads' stacks to the serve log
    time.sleep(1.0)
    with log.open("rb") as f:
        f.seek(size)
        path.write_text("py-spy not found; faulthandler dump from the serve log:\n" + f.read().decode(errors="replace"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("out")
    ap.add_argument("--model", required=True)
    ap.add_argument("--levels", default="16,64")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--env", action="append", default=[])
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = dict(kv.split("=", 1) for kv in a.env)
    env = {
        **os.environ,
        "CNNSERVE_MODELS": a.model,
        "CNNSERVE_TIERS": "two",
        "CNNSERVE_API_WORKERS": os.environ.get("API_WORKERS", "12"),
        "CNNSERVE_JPEG_DRAFT": "0.9",
        "CNNSERVE_ACCESS_LOG": "false",
        **extra,
    }
    log = out / f"{a.name}.serve.log"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    t0 = time.time()
    proc = _start(
        [sys.executable, "-m", "bentoml", "serve", "--port", str(port), "--host", "127.0.0.1"],
        env,
        url + "/readyz",
        log,
    )
    result: dict = {"name": a.name, "env": extra, "startup_s": round(time.time() - t0, 1), "levels": []}
    try:
        tier = _process_groups(proc.pid)["model_tier"]
        pid = max(tier, key=lambda p: p.memory_info().rss).pid  # the worker that holds the sessions
        result["model_tier_pid"] = pid
        result["models"] = [
            {k: m.get(k) for k in ("name", "ready", "providers", "error")}
            | {"batch_limit": (m.get("batching") or {}).get("max_batch_size")}
            for m in json.loads(fetch(url + "/models"))["models"]
        ]
        image = test_image()
        run_load(url, image=image, fields={"model": a.model}, concurrency=8, duration=2, log=lambda _: None)
        for c in [int(v) for v in a.levels.split(",")]:
            m0, k0 = metrics(url), thread_ticks(pid)
            dumper = threading.Timer(a.duration * 0.5, dump_stacks, (pid, out / f"{a.name}.c{c}.stacks.txt", log))
            dumper.start()
            r = _profiled_load(
                url, proc.pid, image=image, fields={"model": a.model}, concurrency=c, duration=a.duration, log=print
            )
            dumper.join()
            m1, k1 = metrics(url), thread_ticks(pid)
            d = {k: m1.get(k, 0.0) - m0.get(k, 0.0) for k in m1}
            runs = d.get("cnnserve_batch_size_count", 0.0)
            busy = r["profile"]["cpu_cores_busy"]
            top = sorted(((k1[t] - k0.get(t, 0)) / TICK / r["duration_s"], t) for t in k1)[::-1][:6]
            level = {
                "clients": c,
                "img_s": r["requests_per_s"],
                "errors": r["errors"],
                "p50_ms": r["latency_ms"]["p50"],
                "p99_ms": r["latency_ms"]["p99"],
                "gpu_percent": r["profile"]["gpu_utilisation_percent"],
                "cores_busy": busy,
                "model_tier_cpu_ms_per_image": round(1e3 * busy["model_tier"] * r["duration_s"] / max(r["ok"], 1), 2),
                "api_cpu_ms_per_image": round(1e3 * busy["api"] * r["duration_s"] / max(r["ok"], 1), 2),
                "runs": runs,
                "runs_s": round(runs / r["duration_s"], 1),
                "images_per_run": round(d.get("cnnserve_batch_size_sum", 0.0) / max(runs, 1), 2),
                "ms_per_run": round(1e3 * d.get("cnnserve_batch_seconds_sum", 0.0) / max(runs, 1), 2),
                "model_tier_cpu_ms_per_run": round(1e3 * busy["model_tier"] * r["duration_s"] / max(runs, 1), 1),
                "rows_histogram_cumulative": {
                    re.search(r'le="([^"]+)"', k).group(1): v
                    for k, v in d.items()
                    if k.startswith("cnnserve_batch_size_bucket")
                },
                "top_threads_cores": [(round(cores, 2), tid) for cores, tid in top],
            }
            result["levels"].append(level)
            print(json.dumps(level), flush=True)
            (out / f"{a.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    finally:
        _stop(proc)
    (out / f"{a.name}.json").write_text(json.dumps(result, indent=1) + "\n")


def fetch(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


if __name__ == "__main__":
    main()
