#!/usr/bin/env python3
"""Shape-switch test, pure onnxruntime, through the service's own session + run path (no server).

Hypothesis H1: since onnxruntime 1.20 the CUDA Conv kernel (cuDNN-frontend path) keeps ONE input shape per Conv
node and rebuilds its cuDNN plan whenever a run's shape differs from the previous run's, so a batcher that pads to
*varying* powers of two pays the "first run of a new shape" cost (130-200 ms for ResNet-50) on nearly every run.

usage (repo root, PYTHONPATH=.):  python3 ort_shapes.py MODEL_TAG_OR_ONNX OUTDIR [--cpu] [--quick] [--cudnn-log]
Writes OUTDIR/ort_shapes.json, OUTDIR/ort_placement.txt, OUTDIR/ort_profile_summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.getcwd())
import onnxruntime as ort  # noqa: E402
from cnnserve.service.runtime.model import load_model  # noqa: E402
from cnnserve.service.runtime.sessions import (
    SessionConfig,  # noqa: E402
    with_provider_options,  # noqa: E402
)
from cnnserve.service.settings import get_settings  # noqa: E402

ROWS: list[dict] = []


def model_path(arg: str) -> Path:
    if arg.endswith(".onnx"):
        return Path(arg)
    from cnnserve.service.store import find_entry

    return find_entry(arg).path


def batch(n: int) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, 3, 224, 224), dtype=np.uint8)


def emit(out: Path, row: dict) -> None:
    ROWS.append(row)
    print(json.dumps(row), flush=True)
    (out / "ort_shapes.json").write_text(json.dumps(ROWS, indent=1) + "\n")


def sequence(out: Path, label: str, models, shapes: list[int]) -> None:
    """Runs ``shapes`` in order on one thread; ``models`` is a LoadedModel or {batch size: LoadedModel}."""
    xs = {s: batch(s) for s in set(shapes)}
    walls, cpus = [], []
    p0 = time.process_time()
    t_all = time.perf_counter()
    for s in shapes:
        m = models[s] if isinstance(models, dict) else models
        t0, c0 = time.perf_counter(), time.thread_time()
        m.run(xs[s])
        walls.append(time.perf_counter() - t0)
        cpus.append(time.thread_time() - c0)
    wall = time.perf_counter() - t_all
    emit(
        out,
        {
            "test": label,
            "runs": len(shapes),
            "images": sum(shapes),
            "median_ms": round(1e3 * float(np.median(walls)), 3),
            "max_ms": round(1e3 * max(walls), 3),
            "caller_cpu_ms_per_run": round(1e3 * float(np.mean(cpus)), 3),
            "process_cpu_ms_per_run": round(1e3 * (time.process_time() - p0) / len(shapes), 3),
            "img_s": round(sum(shapes) / wall, 1),
        },
    )


def threads(out: Path, label: str, plan: list[tuple[object, int]], seconds: float) -> None:
    """One thread per (model, batch size), each looping for ``seconds``: what 2 batches in flight do."""
    stop = threading.Event()
    counts = [0] * len(plan)

    def loop(i: int, m, s: int) -> None:
        x = batch(s)
        while not stop.is_set():
            m.run(x)
            counts[i] += 1

    ts = [threading.Thread(target=loop, args=(i, m, s)) for i, (m, s) in enumerate(plan)]
    p0, t0 = time.process_time(), time.perf_counter()
    for t in ts:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    runs = sum(counts)
    images = sum(c * s for c, (_, s) in zip(counts, plan, strict=True))
    emit(
        out,
        {
            "test": label,
            "runs": runs,
            "images": images,
            "runs_s": round(runs / wall, 1),
            "img_s": round(images / wall, 1),
            "process_cpu_cores": round((time.process_time() - p0) / wall, 2),
            "process_cpu_ms_per_run": round(1e3 * (time.process_time() - p0) / max(runs, 1), 3),
        },
    )


def placement(out: Path, path: Path, providers) -> None:
    """Verbose session creation: which nodes land on which provider, Memcpy nodes added (stderr → file)."""
    log = out / "ort_placement_raw.txt"
    so = SessionConfig.from_settings(get_settings()).options()
    so.log_severity_level = 0
    so.log_verbosity_level = 0
    ort.set_default_logger_severity(0)
    saved = os.dup(2)
    with log.open("wb") as f:
        os.dup2(f.fileno(), 2)
        try:
            ort.InferenceSession(str(path), sess_options=so, providers=providers)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            ort.set_default_logger_severity(3)
    keep = [
        line
        for line in log.read_text(errors="replace").splitlines()
        if any(
            k in line
            for k in (
                "VerifyEachNodeIsAssignedToAnEp",
                "transformer_memcpy",
                "Memcpy nodes",
                "fallback",
                "Fallback",
                "not assigned",
                "EP Error",
            )
        )
    ]
    (out / "ort_placement.txt").write_text("\n".join(keep[:400]) + "\n")
    print(f"placement: {len(keep)} relevant log lines (ort_placement.txt)", flush=True)
    log.unlink()


def profile(out: Path, path: Path, providers, shapes: list[int]) -> None:
    """ORT's own per-node host time per run: Conv nodes after a shape switch vs a repeat of the same shape."""
    so = SessionConfig.from_settings(get_settings()).options()
    so.enable_profiling = True
    so.profile_file_prefix = str(out / "ort_profile")
    sess = ort.InferenceSession(str(path), sess_options=so, providers=providers)
    name = sess.get_inputs()[0].name
    for s in shapes:
        sess.run(None, {name: batch(s)})
    events = json.loads(Path(sess.end_profiling()).read_text())
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    per_run, providers_seen = [], {}
    for i, r in enumerate(runs):
        inside = [e for e in nodes if r["ts"] <= e["ts"] <= r["ts"] + r["dur"]]
        conv = [e for e in inside if e.get("args", {}).get("op_name") in ("Conv", "FusedConv", "NhwcConv")]
        for e in inside:
            key = f"{e['args'].get('op_name')}@{e['args'].get('provider')}"
            providers_seen[key] = providers_seen.get(key, 0) + (1 if i == 0 else 0)
        per_run.append(
            {
                "batch": shapes[i] if i < len(shapes) else None,
                "run_ms": round(r["dur"] / 1e3, 3),
                "conv_nodes": len(conv),
                "conv_host_ms": round(sum(e["dur"] for e in conv) / 1e3, 3),
                "max_conv_host_ms": round(max((e["dur"] for e in conv), default=0) / 1e3, 3),
                "all_nodes_host_ms": round(sum(e["dur"] for e in inside) / 1e3, 3),
            }
        )
    summary = {"shapes": shapes, "per_run": per_run, "ops_by_provider_first_run": providers_seen}
    (out / "ort_profile_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    for row in per_run:
        print("profile", json.dumps(row), flush=True)


def cudnn_log_child(path: Path, pattern: str) -> None:
    """(child process) warm both shapes, then run ``pattern``; cuDNN's API log counts the plan finalizations."""
    m = load_model("m", path, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    for s in (8, 16):
        m.run(batch(s))
    print("=== MARK measured runs", file=sys.stderr, flush=True)
    for s in [int(v) for v in pattern.split(",")]:
        m.run(batch(s))


def cudnn_log(out: Path, path: Path) -> None:
    for label, pattern in (("same16x10", ",".join(["16"] * 10)), ("alt8_16x10", ",".join(["8", "16"] * 5))):
        log = out / f"cudnn_{label}.log"
        env = {**os.environ, "CUDNN_LOGLEVEL_DBG": "3", "CUDNN_LOGDEST_DBG": str(log)}
        subprocess.run(
            [sys.executable, __file__, str(path), str(out), "--child", pattern],
            env=env,
            timeout=120,
            check=False,
            capture_output=True,
        )
        text = log.read_text(errors="replace") if log.exists() else ""
        emit(
            out,
            {
                "test": f"cudnn_api_log_{label}",
                "log_bytes": len(text),
                "cudnnBackendFinalize_total": text.count("cudnnBackendFinalize"),
                "cudnnBackendExecute_total": text.count("cudnnBackendExecute"),
                "note": "compare totals between the two: extra finalizations = plan rebuilds in measured runs",
            },
        )
        log.unlink(missing_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--cpu", action="store_true", help="smoke test on the CPU provider")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cudnn-log", action="store_true")
    ap.add_argument("--child")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = model_path(a.model)
    if a.child:
        cudnn_log_child(path, a.child)
        return
    names = ["CPUExecutionProvider"] if a.cpu else ["CUDAExecutionProvider", "CPUExecutionProvider"]
    k = 2 if a.quick else 20  # repetitions
    small, big = (1, 2) if a.quick else (8, 16)
    t = 1.0 if a.quick else 3.0
    print("onnxruntime", ort.__version__, ort.get_device(), names, path, flush=True)

    load = lambda **kw: load_model("m", path, providers=names, **kw)  # noqa: E731
    m = load()
    emit(
        out,
        {"test": "session", "providers": m.info.providers, "io_binding": m.io_binding, "cache": m.info.session_cache},
    )
    for s in (1, 2, 4, 8, 16, 32) if not a.quick else (1, 2):  # the service's warm-up, ascending
        m.run(batch(s))
    sequence(out, f"same{big}", m, [big] * (2 * k))
    sequence(out, f"same{small}", m, [small] * (2 * k))
    sequence(out, f"alt{small}_{big}", m, [small, big] * k)
    sequence(out, "cycle_pow2", m, ([1, 2, 4, 8, 16, 32] if not a.quick else [1, 2]) * max(2, k // 3))
    m2 = load()  # a second session: its own Conv kernels and their state
    m2.run(batch(small))
    m.run(batch(big))
    sequence(out, f"alt{small}_{big}_one_session_per_shape", {small: m2, big: m}, [small, big] * k)
    threads(out, f"2threads_same_session_{small}+{big}", [(m, small), (m, big)], t)
    threads(out, f"2threads_same_session_{big}+{big}", [(m, big), (m, big)], t)
    threads(out, f"2threads_two_sessions_{small}+{big}", [(m2, small), (m, big)], t)
    if not a.cpu:
        m.io_binding = False  # session.run with numpy instead of io-binding, same session
        sequence(out, f"alt{small}_{big}_no_iobinding", m, [small, big] * k)
        sequence(out, f"same{big}_no_iobinding", m, [big] * (2 * k))
        m.io_binding = True
        from cnnserve.service.runtime import model as runtime

        orig = runtime.with_provider_options
        runtime.with_provider_options = lambda p, **kw: orig(p, **{**kw, "conv_algo_search": "DEFAULT"})
        md = load()
        runtime.with_provider_options = orig
        for s in (small, big):
            md.run(batch(s))
        sequence(out, f"alt{small}_{big}_algo_DEFAULT", md, [small, big] * k)
        sequence(out, f"same{big}_algo_DEFAULT", md, [big] * (2 * k))
    providers = with_provider_options(names) if not a.cpu else names
    placement(out, path, providers)
    profile(out, path, providers, [big, big, big, small, small, big, big] if not a.quick else [2, 2, 1, 2])
    if a.cudnn_log and not a.cpu:
        cudnn_log(out, path)


if __name__ == "__main__":
    main()
