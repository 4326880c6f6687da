"""The CUDA provider options the service sets (service/runtime.py ``with_provider_options``), measured on one file:
``cudnn_conv_algo_search`` HEURISTIC / EXHAUSTIVE / DEFAULT (first run of each batch shape, and steady state),
io-binding vs plain ``session.run``, and what a wrong ``device_id`` does.

    python3 benchmarks/gpu/cuda_options.py --file resnet50-fp16.onnx --output cuda_options.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch  # noqa: F401  (loads the CUDA libraries onnxruntime-gpu links against)
from cnnserve.service.runtime.model import load_model
from cnnserve.service.runtime.sessions import SessionConfig, create_session, with_provider_options


def _timed(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--file", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    result: dict = {"file": args.file.name, "onnxruntime": ort.__version__, "algo_search": {}}
    config = SessionConfig(cache_dir=None)
    for algo in ("HEURISTIC", "EXHAUSTIVE", "DEFAULT"):
        providers = with_provider_options(["CUDAExecutionProvider", "CPUExecutionProvider"], conv_algo_search=algo)
        start = time.perf_counter()
        session, _ = create_session(args.file, providers, config)
        rows = {"session_s": round(time.perf_counter() - start, 3), "providers": session.get_providers()}
        inp = session.get_inputs()[0]
        for b in batches:
            x = np.random.default_rng(0).integers(0, 256, (b, 3, 224, 224), dtype=np.uint8)
            if "float" in inp.type:
                x = x.astype(np.float32) / 255
            feed = {inp.name: x}
            t = time.perf_counter()
            session.run(None, feed)
            first = (time.perf_counter() - t) * 1000
            ms = _timed(lambda feed=feed, s=session: s.run(None, feed), args.runs)
            rows[f"batch{b}"] = {"first_run_ms": round(first, 2), "median_ms": round(ms, 3),
                                 "images_per_s": round(b / ms * 1000, 1)}  # fmt: skip
        result["algo_search"][algo] = rows
        print(algo, json.dumps(rows), flush=True)
        del session
    # io-binding (what the service does on CUDA) vs session.run, through the service's own model object
    binding = {}
    for io in (True, False):
        model = load_model("m", args.file, providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
                           io_binding=io)  # fmt: skip
        for b in batches:
            x = np.random.default_rng(0).integers(0, 256, (b, 3, 224, 224), dtype=np.uint8)
            model.run(x)
            ms = _timed(lambda x=x, model=model: model.run(x), args.runs)
            binding[f"{'io-binding' if io else 'session.run'} batch{b}"] = round(b / ms * 1000, 1)
    result["io_binding_images_per_s"] = binding
    print("io-binding", json.dumps(binding), flush=True)
    # a device that is not there: the model must come back not ready, with the reason
    wrong = load_model("m", args.file, providers=["CUDAExecutionProvider", "CPUExecutionProvider"], device_id=7)
    result["device_id_7"] = {"ready": wrong.info.ready, "providers": wrong.info.providers, "error": wrong.info.error}
    print("device_id=7", json.dumps(result["device_id_7"]), flush=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
