"""``cnnserve bench serving-cpu``: the CPU cost of serving one image, measured without a GPU.

A GPU serving ResNet-50 at 2,500 images/s on a 16-core host leaves about 6 ms of CPU per request for everything
else: HTTP, decoding, resizing, the hop to the model tier, batching, answering, and the load generator. This
benchmark measures those costs on any machine by serving a *null* model with ResNet-50's contract (uint8
3×224×224 in, 1,000 probabilities out, next to no compute: one pixel sliced, multiplied by zeros, softmax) through
the same two tiers the GPU service uses, under closed-loop clients sending 640×480 JPEGs.

What it reports, from the processes' own CPU time (psutil, user + system) over the load window:

* ``api_cpu_ms_per_req``: CPU of the API workers per request (HTTP, decode, resize, batching, answer);
* ``model_cpu_ms_per_img`` and ``model_cpu_ms_per_call``: CPU of the model-tier process per image and per call
  it received (receiving, batching across workers, onnxruntime's near-zero run, replying);
* ``transport_cpu_ms_per_img``: the CPU both tiers spend *moving* an image between them (packing, the socket,
  unpacking), counted by the transport itself (``cnnserve_transport_cpu_seconds_total`` in ``/metrics``);
* ``loadgen_cpu_ms_per_req``: the load generator's CPU per request (it shares the machine);
* ``served_req_s_64`` at 64 clients, and ``predicted_img_s_16_cores``: 16 cores' worth of CPU divided by what
  one request costs on every side here (API + model tier + load generator), i.e. what a 16-core host could
  serve if the GPU were free.

Results go to ``benchmarks/serving-cpu/results.json`` and ``RESULTS.md`` beside it.
"""

from __future__ import annotations

import io
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .loadtest import run_load
from .suite import _free_port, _start, _stop

__all__ = ["NULL_TAG", "make_null_model", "serving_cpu_benchmark", "TARGETS"]

NULL_TAG = "null-resnet50"
# The model tier runs the null model with ResNet-50 fp16's GPU plan: its batch limit on the H100 (the family
# default) and batch buckets, so batching, padding and the transport cost what they would cost there.
GPU_PLAN = {"CNNSERVE_MODEL_MAX_BATCH_SIZE": "128", "CNNSERVE_BATCH_BUCKETS": "1,8,32,128"}
# The targets on this kind of machine (2 shared cores), per request / per image at 64 clients.
TARGETS = {"api_cpu_ms_per_req": 3.0, "model_cpu_ms_per_img": 0.3}


def make_null_model(path: Path) -> Path:
    """An ONNX file with ResNet-50's served contract (the uint8-input fp16 variant's: uint8 [N, 3, 224, 224] →
    probabilities [N, 1000], ImageNet labels, the 256-resize / 224-crop recipe) and no real compute."""
    import onnx
    from cnnserve.export.onnx import contract_for
    from cnnserve.models import get_spec
    from onnx import TensorProto, helper, numpy_helper

    contract = contract_for(get_spec("resnet50"), weights="null", precision="fp16", input_dtype="uint8", parity=0.0)
    k = contract.classes
    inits = [
        numpy_helper.from_array(np.array([0, 0, 0, 0], np.int64), "starts"),
        numpy_helper.from_array(np.array([2**62, 1, 1, 1], np.int64), "ends"),
        numpy_helper.from_array(np.array([-1, 1], np.int64), "shape"),
        numpy_helper.from_array(np.zeros((1, k), np.float32), "zeros"),
    ]
    nodes = [
        helper.make_node("Slice", ["images", "starts", "ends"], ["pixel"]),  # (N, 1, 1, 1): one pixel per image
        helper.make_node("Cast", ["pixel"], ["pixel_f"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["pixel_f", "shape"], ["column"]),
        helper.make_node("Mul", ["column", "zeros"], ["logits"]),  # (N, K) zeros
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    h, w = contract.input_size
    graph = helper.make_graph(
        nodes,
        "null_resnet50",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", contract.in_channels, h, w])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", k])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="cnnserve")
    model.ir_version = 10
    for key, value in contract.to_metadata().items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _jpeg_640x480() -> bytes:
    """The request image: scikit-image's astronaut as a 640×480 quality-90 JPEG (a typical camera frame)."""
    import skimage.data
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).resize((640, 480)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _store(home: Path, path: Path) -> None:
    """Save the file into a fresh BentoML store (a subprocess: BENTOML_HOME is read when bentoml is imported)."""
    import subprocess

    code = (
        "import sys; from pathlib import Path; from cnnserve.export.store import save_to_store\n"
        f"save_to_store(Path(sys.argv[1]), name={NULL_TAG!r}, task='classification', metadata={{'model': 'null'}})\n"
    )
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    subprocess.run([sys.executable, "-c", code, str(path)], env=env, check=True, capture_output=True)


def _metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def _scrape(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=30) as response:
        return response.read().decode()


def _cpu_seconds(procs: list[Any]) -> float:
    import psutil

    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def _measure(url: str, root_pid: int, image: bytes, clients: int, duration: float, log) -> dict[str, Any]:
    """One load level: CPU seconds per process group and the transport's own counters, over the load window."""
    from .serve import _process_groups

    groups = _process_groups(root_pid)
    before_text = _scrape(url)
    before = {name: _cpu_seconds(procs) for name, procs in groups.items()}
    load_before = time.process_time()
    result = run_load(url, image=image, concurrency=clients, duration=duration, processes=1, log=log)
    loadgen = time.process_time() - load_before
    after = {name: _cpu_seconds(procs) for name, procs in groups.items()}
    after_text = _scrape(url)

    def delta(name: str, **labels: str) -> float:
        return _metric_sum(after_text, name, **labels) - _metric_sum(before_text, name, **labels)

    requests_ok = max(1, result["ok"])
    images = delta("cnnserve_batch_size_sum", model=NULL_TAG) or requests_ok
    runs = delta("cnnserve_batch_size_count", model=NULL_TAG)
    calls = delta("cnnserve_transport_messages_total", side="model") or runs
    transport = delta("cnnserve_transport_cpu_seconds_total")
    api = after["api"] - before["api"]
    model = after["model_tier"] - before["model_tier"]
    return {
        "clients": clients,
        "requests": result["requests"],
        "errors": result["errors"],
        "requests_per_s": result["requests_per_s"],
        "latency_ms": result["latency_ms"],
        "api_workers": len(groups["api"]),
        "api_cpu_s": round(api, 3),
        "model_cpu_s": round(model, 3),
        "loadgen_cpu_s": round(loadgen, 3),
        "images": int(images),
        "runs": int(runs),
        "tier_calls": int(calls),
        "images_per_run": round(images / max(runs, 1), 2),
        "images_per_call": round(images / max(calls, 1), 2),
        "api_cpu_ms_per_req": round(1000 * api / requests_ok, 3),
        "model_cpu_ms_per_img": round(1000 * model / max(images, 1), 4),
        "model_cpu_ms_per_call": round(1000 * model / max(calls, 1), 4),
        "transport_cpu_ms_per_img": round(1000 * transport / max(images, 1), 4),
        "loadgen_cpu_ms_per_req": round(1000 * loadgen / requests_ok, 3),
    }


def serving_cpu_benchmark(
    *,
    clients: tuple[int, ...] = (1, 16, 64),
    duration: float = 15.0,
    api_workers: int = 1,
    jpeg_draft: float | None = None,
    env: dict[str, str] | None = None,
    output_dir: Path = Path("benchmarks/serving-cpu"),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Serve the null model with two tiers and ``api_workers`` API workers, load it at each client count, and
    write the per-request CPU figures (the 64-client level is the headline)."""
    import psutil

    image = _jpeg_640x480()
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="cnnserve-serving-cpu-") as tmp:
        tmp_path = Path(tmp)
        make_null_model(tmp_path / "null.onnx")
        _store(tmp_path / "bentoml", tmp_path / "null.onnx")
        port = _free_port()
        server_env = {
            **os.environ,
            "BENTOML_HOME": str(tmp_path / "bentoml"),
            "BENTOML_DO_NOT_TRACK": "true",
            "CNNSERVE_TIERS": "two",
            "CNNSERVE_API_WORKERS": str(api_workers),
            "CNNSERVE_MODELS": NULL_TAG,
            "CNNSERVE_ORT_CACHE_DIR": str(tmp_path / "ort-cache"),
            "CNNSERVE_BATCH_PROFILES": str(tmp_path / "batching.json"),
            "CNNSERVE_GRPC_PORT": "0",  # HTTP only: never contend for 8001 with another server
            **GPU_PLAN,
            **({"CNNSERVE_JPEG_DRAFT": str(jpeg_draft)} if jpeg_draft is not None else {}),
            **(env or {}),
        }
        url = f"http://127.0.0.1:{port}"
        log_file = tmp_path / "serve.log"
        command = [str(Path(sys.executable).parent / "bentoml"), "serve", "--port", str(port), "--host", "127.0.0.1"]
        process = _start(command, server_env, url + "/readyz", log_file)
        try:
            run_load(url, image=image, concurrency=8, duration=2.0, processes=1, log=lambda _: None)  # warm up
            levels = []
            for n in clients:
                log(f"-- {n} clients")
                level = _measure(url, process.pid, image, n, duration, log)
                log(json.dumps(level))
                levels.append(level)
        finally:
            _stop(process)
    load_after = [round(x, 2) for x in os.getloadavg()]
    headline = next((lv for lv in levels if lv["clients"] == 64), levels[-1])
    per_request = headline["api_cpu_ms_per_req"] + headline["model_cpu_ms_per_img"] + headline["loadgen_cpu_ms_per_req"]
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores ({_cpu_model()})",
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # CPU seconds per request are what is measured, but other jobs on the machine still inflate them (caches,
        # scheduling): the load average says how quiet it was.
        "load_average_before": load_before,
        "load_average_after": load_after,
        "settings": {"api_workers": api_workers, "jpeg_draft": jpeg_draft, "tiers": "two", **GPU_PLAN, **(env or {})},
        "image": "640x480 JPEG (astronaut, quality 90)",
        "api_cpu_ms_per_req": headline["api_cpu_ms_per_req"],
        "model_cpu_ms_per_img": headline["model_cpu_ms_per_img"],
        "model_cpu_ms_per_call": headline["model_cpu_ms_per_call"],
        "transport_cpu_ms_per_img": headline["transport_cpu_ms_per_img"],
        "loadgen_cpu_ms_per_req": headline["loadgen_cpu_ms_per_req"],
        "served_req_s_64": headline["requests_per_s"],
        "predicted_img_s_16_cores": round(16 * 1000 / per_request, 1),
        "targets": TARGETS,
        "levels": levels,
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (output_dir / "RESULTS.md").write_text(_markdown(results))
    return results


def _cpu_model() -> str:
    from cnnserve.service.runtime.policy import _cpu_model as model

    return model()


def _markdown(r: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| {lv['clients']} | {lv['requests_per_s']} | {lv['latency_ms']['p50']} / {lv['latency_ms']['p99']} | "
        f"{lv['api_cpu_ms_per_req']} | {lv['model_cpu_ms_per_img']} | {lv['model_cpu_ms_per_call']} | "
        f"{lv['transport_cpu_ms_per_img']} | {lv['loadgen_cpu_ms_per_req']} | {lv['images_per_call']} | "
        f"{lv['images_per_run']} | {lv['errors']} |"
        for lv in r["levels"]
    )
    met = {k: r[k] <= v for k, v in r["targets"].items()}
    return f"""# Serving CPU budget (null model, two tiers, no GPU)

Measured {r["measured_at"]} on {r["machine"]}, load average {r["load_average_before"]} before and
{r["load_average_after"]} after; settings {json.dumps(r["settings"])}; requests: {r["image"]} to
`POST /classify` from closed-loop clients on the same machine. Rerun: `cnnserve bench serving-cpu` (add
`--jpeg-draft 0.9` for draft decoding).

| clients | req/s | p50 / p99 ms | API CPU ms/req | model tier CPU ms/img | … ms/call | transport CPU ms/img \
| load generator CPU ms/req | images/call | images/run | errors |
|---|---|---|---|---|---|---|---|---|---|---|
{rows}

At 64 clients: **API tier {r["api_cpu_ms_per_req"]} ms per request** (target ≤ {r["targets"]["api_cpu_ms_per_req"]}:
{"met" if met["api_cpu_ms_per_req"] else "missed"}), **model tier {r["model_cpu_ms_per_img"]} ms per image**
(target ≤ {r["targets"]["model_cpu_ms_per_img"]}: {"met" if met["model_cpu_ms_per_img"] else "missed"}), transport
{r["transport_cpu_ms_per_img"]} ms per image (inside both figures), load generator {r["loadgen_cpu_ms_per_req"]} ms per
request. A 16-core host spending that much CPU per image could serve about **{r["predicted_img_s_16_cores"]:,}
images/s** if its GPU kept up.
"""
