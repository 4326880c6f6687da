"""``cnnserve bench serve``: the served service under heavy closed-loop load, against the peers, in one run.

What it measures, in order, on the machine it runs on (made for the lent GPU machine; works on CPU too):

1. raw onnxruntime on the model's file: images/s at several batch sizes, numpy in/out and (CUDA) io-binding;
2. the load generator's own ceiling against a server that answers instantly (``loadtest.client_ceiling``);
3. cnnserve (``bentoml serve`` of this repository, two tiers) at each concurrency, for each API-worker count and
   JPEG draft setting asked for, with a profile of the 64-client run: mean time per stage from ``/metrics``, CPU
   per process group (API workers, model tier, load generator) and GPU utilisation;
4. the peers, started here: ``benchmarks/peers/torch_server.py`` (Starlette/FastAPI + torch eager) and
   ``benchmarks/peers/bentoml_plain.py`` (BentoML + onnxruntime, PIL preprocessing, N workers).

Results go to one JSON file (the headline keys first) and a short Markdown summary next to it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .loadtest import client_ceiling, run_load
from .suite import _free_port, _start, _stop  # the suite's server helpers, shared

__all__ = ["serve_benchmark", "test_image"]

ROOT = Path(__file__).resolve().parent.parent


def test_image(width: int = 640, height: int = 480, quality: int = 90) -> bytes:
    """A real photo (skimage's astronaut) as a ``width``×``height`` JPEG: what a camera or a browser uploads."""
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).resize((width, height)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


# --- raw onnxruntime ------------------------------------------------------------------------------------------


def raw_onnxruntime(path: Path, batches: tuple[int, ...], seconds: float = 2.0) -> dict[str, Any]:
    """Images/s of the bare session at each batch size: numpy in/out, and on CUDA also io-binding with the input
    already on the device (the ceiling a server could approach)."""
    import onnxruntime as ort
    from cnnserve.service.runtime.sessions import select_providers, with_provider_options

    providers = select_providers([], ort.get_available_providers())
    session = ort.InferenceSession(str(path), providers=with_provider_options(providers))
    inp = session.get_inputs()[0]
    dtype = np.uint8 if inp.type == "tensor(uint8)" else np.float32
    shape = [d if isinstance(d, int) else 1 for d in inp.shape[1:]]
    out: dict[str, Any] = {"providers": session.get_providers(), "input_dtype": np.dtype(dtype).name}
    on_cuda = session.get_providers()[0] == "CUDAExecutionProvider"
    for batch in batches:
        x = (np.random.default_rng(0).random((batch, *shape)) * (255 if dtype == np.uint8 else 1)).astype(dtype)
        row: dict[str, float] = {}

        def rate(fn: Callable[[], object], b: int = batch) -> float:
            for _ in range(3):
                fn()
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                fn()
                n += 1
            return round(n * b / (time.perf_counter() - start), 1)

        row["numpy"] = rate(lambda x=x: session.run(None, {inp.name: x}))
        if on_cuda:
            binding = session.io_binding()
            binding.bind_ortvalue_input(inp.name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
            for o in session.get_outputs():
                binding.bind_output(o.name, "cuda", 0)
            row["io_binding_on_device"] = rate(lambda b=binding: session.run_with_iobinding(b))
        out[str(batch)] = row
    return out


# --- profiles ---------------------------------------------------------------------------------------------------


def _stage_means(url: str) -> dict[str, float]:
    """Mean ms per request stage (decode, preprocess, inference incl. batching wait, postprocess) from /metrics."""
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("cnnserve_stage_seconds_sum") or line.startswith("cnnserve_stage_seconds_count"):
            stage = line.split('stage="', 1)[1].split('"', 1)[0]
            value = float(line.rsplit(" ", 1)[1])
            (sums if "_sum" in line else counts)[stage] = (sums if "_sum" in line else counts).get(stage, 0) + value
    return {stage: round(1000 * sums[stage] / counts[stage], 3) for stage in sums if counts.get(stage)}


def _process_groups(root_pid: int) -> dict[str, list[Any]]:
    import psutil

    groups: dict[str, list[Any]] = {"api": [], "model_tier": [], "other": []}
    try:
        children = psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return groups
    for proc in children:
        try:
            cmd = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if "cnnserve-models" in cmd:
            groups["model_tier"].append(proc)
        elif "--service-name cnnserve" in cmd or "_bentoml_impl.worker" in cmd:
            groups["api"].append(proc)
        else:
            groups["other"].append(proc)
    return groups


def _served_plan(url: str, model: str) -> dict[str, Any]:
    """The model's batch plan as ``/models`` shows it, and the GPU memory in use once it is loaded and warm: with
    one session per bucket and run in flight, that is about sessions × the weights (they are not shared)."""
    import urllib.request

    with urllib.request.urlopen(url + "/models", timeout=10) as response:
        models = json.loads(response.read())["models"]
    entry = next((m for m in models if m["name"] == model), {})
    batching = entry.get("batching") or {}
    used = _nvidia_smi("memory.used", "csv,noheader,nounits")
    return {
        "providers": entry.get("providers"),
        "max_batch_size": batching.get("max_batch_size"),
        "buckets": batching.get("buckets"),
        "sessions": batching.get("sessions"),
        "gpu_memory_used_mb": float(used) if used else None,
    }


def _nvidia_smi(query: str, fmt: str = "csv,noheader") -> str | None:
    """The first GPU's answer to ``nvidia-smi --query-gpu=QUERY``, or None on a machine without one."""
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", f"--format={fmt}"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0] if out.returncode == 0 and lines else None


def _gpu_utilisation() -> float | None:
    try:
        return float(_nvidia_smi("utilization.gpu", "csv,noheader,nounits") or "")
    except ValueError:
        return None


def _profiled_load(url: str, root_pid: int, **load: Any) -> dict[str, Any]:
    """run_load, while sampling CPU per process group and the GPU: which part is busy."""
    import threading

    import psutil

    groups = _process_groups(root_pid)
    for procs in groups.values():
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.cpu_percent(None)
    psutil.cpu_percent(None)
    gpu: list[float] = []

    def sample_gpu() -> None:
        time.sleep(load["duration"] * 0.3)
        for _ in range(3):
            value = _gpu_utilisation()
            if value is not None:
                gpu.append(value)
            time.sleep(load["duration"] * 0.15)

    sampler = threading.Thread(target=sample_gpu, daemon=True)
    sampler.start()
    result = run_load(url, **load)
    machine = psutil.cpu_percent(None)
    cpu: dict[str, float] = {}
    for name, procs in groups.items():
        total = 0.0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                total += p.cpu_percent(None)
        cpu[name] = round(total / 100, 2)  # in cores
    sampler.join(timeout=1)
    result["profile"] = {
        "cpu_cores_busy": cpu,
        "machine_cpu_percent": machine,
        "cores": psutil.cpu_count(),
        "gpu_utilisation_percent": round(float(np.mean(gpu)), 1) if gpu else None,
    }
    return result


# --- the benchmark --------------------------------------------------------------------------------------------


def serve_benchmark(
    *,
    model: str,
    levels: tuple[int, ...] = (1, 16, 64, 256),
    peer_levels: tuple[int, ...] = (1, 64),
    duration: float = 8.0,
    api_workers: tuple[int, ...] = (0,),
    jpeg_draft: tuple[float, ...] = (1.0,),
    peers: tuple[str, ...] = ("torch", "bentoml"),
    peer_workers: int = 4,
    torch_model: str | None = None,
    raw_batches: tuple[int, ...] = (1, 8, 64, 256),
    client_processes: int = 0,
    output: Path = Path("benchmarks/gpu/results.json"),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Everything above in one run; ``model`` is a store tag (``resnet50-fp16-u8``)."""
    from cnnserve.service.store import find_entry

    entry = find_entry(model)
    if entry.path is None:
        raise RuntimeError(entry.error or f"{model} has no ONNX file in the store")
    if torch_model is None:  # the peer runs the same architecture as the served file
        import onnx

        meta = {p.key: p.value for p in onnx.load(str(entry.path), load_external_data=False).metadata_props}
        torch_model = json.loads(meta["cnnserve.spec"])["name"]
    image = test_image()
    logs = Path(tempfile.mkdtemp(prefix="cnnserve-bench-serve-"))
    results: dict[str, Any] = {
        "device": _device(),
        "model": model,
        "image": f"skimage astronaut, 640x480 JPEG q90, {len(image)} bytes",
        "cpu_cores": os.cpu_count(),
        "python": platform.python_version(),
    }

    log(f"raw onnxruntime on {entry.path.name} …")
    results["raw_onnxruntime"] = raw_onnxruntime(entry.path, raw_batches)
    log(json.dumps(results["raw_onnxruntime"]))

    top = max(levels)
    results["client_ceiling"] = client_ceiling(
        image=image, concurrency=top, duration=min(duration, 5.0), server_processes=4, processes=client_processes
    )
    log(f"load generator ceiling at {top} clients: {results['client_ceiling']['requests_per_s']} req/s")

    runs: list[dict[str, Any]] = []
    configs = [(workers, draft) for workers in api_workers for draft in jpeg_draft]
    for index, (workers, draft) in enumerate(configs):
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "CNNSERVE_MODELS": model,
            "CNNSERVE_TIERS": "two",
            "CNNSERVE_API_WORKERS": str(workers),
            "CNNSERVE_JPEG_DRAFT": str(draft),
            "CNNSERVE_ACCESS_LOG": "false",
            "CNNSERVE_MAX_UPLOAD_MB": "20",
            "CNNSERVE_GRPC_PORT": "0",  # HTTP only: never contend for 8001 with another server
        }
        cmd = [sys.executable, "-m", "bentoml", "serve", "--port", str(port), "--host", "127.0.0.1"]
        log(f"cnnserve: {workers or 'auto'} API workers, jpeg_draft={draft} …")
        proc = _start(cmd, env, url + "/readyz", logs / f"cnnserve-{workers}-{draft}.log")
        try:
            if index == 0:  # the served plan (buckets, sessions) and the GPU memory it holds with every bucket warm
                results["served_plan"] = _served_plan(url, model)
                log(json.dumps(results["served_plan"]))
            run_load(url, image=image, fields={"model": model}, concurrency=8, duration=2, log=lambda _: None)
            # every level for the first configuration; the others where the comparison is made (64 clients)
            for c in levels if index == 0 else tuple(c for c in levels if c == 64) or levels[-1:]:
                load = {"image": image, "fields": {"model": model}, "concurrency": c, "duration": duration}
                result = _profiled_load(url, proc.pid, processes=client_processes, log=log, **load)
                result.update(server="cnnserve", api_workers=workers, jpeg_draft=draft)
                result["stage_ms"] = _stage_means(url)
                runs.append(result)
        finally:
            _stop(proc)

    for peer in peers:
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        if peer == "torch":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
            cmd = [sys.executable, "benchmarks/peers/torch_server.py", "--model", torch_model, "--port", str(port)]
            cmd += ["--device", device] + (["--fp16"] if device == "cuda" else [])
            env = dict(os.environ)
            ready = "/docs"
        else:
            cmd = [sys.executable, "-m", "bentoml", "serve", "benchmarks/peers/bentoml_plain.py:Plain"]
            cmd += ["--port", str(port), "--host", "127.0.0.1"]
            env = {**os.environ, "PLAIN_ONNX": str(entry.path), "PLAIN_WORKERS": str(peer_workers)}
            ready = "/readyz"
        log(f"peer {peer} …")
        try:
            proc = _start(cmd, env, url + ready, logs / f"peer-{peer}.log")
        except RuntimeError as exc:
            log(f"peer {peer} did not start: {exc}")
            results[f"peer_{peer}_error"] = str(exc)[-2000:]
            continue
        try:
            run_load(url, image=image, concurrency=4, duration=2, log=lambda _: None)
            for c in peer_levels:
                load = {"image": image, "concurrency": c, "duration": duration}
                result = _profiled_load(url, proc.pid, processes=client_processes, log=log, **load)
                result.update(server=f"peer_{peer}", workers=peer_workers if peer == "bentoml" else 1)
                runs.append(result)
        finally:
            _stop(proc)

    def best(server: str, c: int) -> dict[str, Any] | None:
        rows = [r for r in runs if r["server"] == server and r["concurrency"] == c and r["errors"] == 0]
        return max(rows, key=lambda r: r["requests_per_s"]) if rows else None

    ours = best("cnnserve", 64)
    raw64 = results["raw_onnxruntime"].get("64", {})
    headline = {
        "device": results["device"],
        "served_img_s_64": ours["requests_per_s"] if ours else None,
        "p99_ms_64": ours["latency_ms"]["p99"] if ours else None,
        "served_config_64": {k: ours[k] for k in ("api_workers", "jpeg_draft")} if ours else None,
        "peer_bentoml_img_s_64": (best("peer_bentoml", 64) or {}).get("requests_per_s"),
        "peer_torch_img_s_64": (best("peer_torch", 64) or {}).get("requests_per_s"),
        "raw_ort_fp16_img_s_bs64": max(raw64.values()) if raw64 else None,
        "client_ceiling_req_s": results["client_ceiling"]["requests_per_s"],
    }
    peers_best = [v for k, v in headline.items() if k.startswith("peer_") and v]
    headline["served_vs_best_peer"] = (
        round(headline["served_img_s_64"] / max(peers_best), 2) if headline["served_img_s_64"] and peers_best else None
    )
    out = {**headline, **results, "runs": runs, "logs": str(logs)}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(out, indent=2) + "\n")
    _write_summary(out, output.with_name("summary.md"))
    log(json.dumps(headline, indent=2))
    return out


def _device() -> str:
    gpu = _nvidia_smi("name,memory.total")
    if gpu:
        return f"{gpu}, {os.cpu_count()} CPU cores"
    return f"CPU only ({platform.processor() or platform.machine()}), {os.cpu_count()} cores"


def _write_summary(out: dict[str, Any], path: Path) -> None:
    lines = [
        f"# cnnserve bench serve — {out['model']} on {out['device']}",
        "",
        f"Upload: {out['image']}. Closed loop, {out['runs'][0]['duration_s'] if out['runs'] else '?'} s per level. "
        f"Load generator ceiling: {out['client_ceiling_req_s']} req/s.",
        "",
        "| server | config | clients | img/s | p50 ms | p99 ms | errors | busy cores (api / model / other) | GPU % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["runs"]:
        config = (
            f"{r.get('api_workers') or 'auto'} API workers, draft {r.get('jpeg_draft')}"
            if r["server"] == "cnnserve"
            else f"{r.get('workers')} worker(s)"
        )
        prof = r.get("profile", {})
        cpu = prof.get("cpu_cores_busy", {})
        lat = r["latency_ms"]
        lines.append(
            f"| {r['server']} | {config} | {r['concurrency']} | {r['requests_per_s']} | {lat['p50']} | {lat['p99']} "
            f"| {r['errors']} | {cpu.get('api', '-')} / {cpu.get('model_tier', '-')} / {cpu.get('other', '-')} "
            f"| {prof.get('gpu_utilisation_percent')} |"
        )
    lines += ["", "Raw onnxruntime (img/s): " + json.dumps(out["raw_onnxruntime"])]
    path.write_text("\n".join(lines) + "\n")
