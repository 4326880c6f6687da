"""``cnnserve bench``: onnxruntime vs PyTorch eager on the same model, weights and batch, in one run.

Timings on shared machines are noisy, so both runtimes are measured back to back in one process, with warm-up
runs first, and the ratio is reported next to the raw medians. Results go to a JSON file as well as the table.
"""

from __future__ import annotations

import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["bench_model"]


def _time(fn: Callable[[], object], *, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def bench_model(
    name: str,
    *,
    batch_sizes: tuple[int, ...] = (1, 8),
    repeats: int = 20,
    warmup: int = 3,
    threads: int = 0,
    output: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Median latency and images/s for onnxruntime (CPU) and PyTorch eager, per batch size."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from export import export_model
    from export.parity import parity_batch
    from export.wrappers import wrap_for_export
    from models import build_model, get_spec

    spec = get_spec(name)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    module, _ = wrap_for_export(build_model(name).eval(), spec)
    with tempfile.TemporaryDirectory(prefix="cnnserve-bench-") as tmp:
        path = Path(tmp) / f"{name}.onnx"
        export_model(name, weights="random", output=path, save=False)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        rows = []
        for batch in batch_sizes:
            images = parity_batch(spec.in_channels, spec.input_size, batch=batch, seed=1)
            feed = {input_name: images.numpy()}
            with torch.inference_mode():
                torch_times = _time(lambda: module(images), repeats=repeats, warmup=warmup)  # noqa: B023
            ort_times = _time(lambda: session.run(None, feed), repeats=repeats, warmup=warmup)  # noqa: B023
            for runtime, times in (("pytorch-eager", torch_times), ("onnxruntime-cpu", ort_times)):
                median = statistics.median(times)
                rows.append(
                    {
                        "runtime": runtime,
                        "batch": batch,
                        "median_ms": round(median * 1000, 2),
                        "p90_ms": round(float(np.percentile(times, 90)) * 1000, 2),
                        "images_per_s": round(batch / median, 1),
                    }
                )
            ratio = statistics.median(torch_times) / statistics.median(ort_times)
            rows.append({"runtime": "speedup onnxruntime/pytorch", "batch": batch, "ratio": round(ratio, 2)})
    result = {
        "model": name,
        "weights": "random (seed 0)",
        "input": [spec.in_channels, *spec.input_size],
        "repeats": repeats,
        "warmup": warmup,
        "threads": threads or torch.get_num_threads(),
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__},
        "results": rows,
    }
    for row in rows:
        if "ratio" in row:
            log(f"  batch {row['batch']:>3}  onnxruntime is {row['ratio']:.2f}× PyTorch eager")
        else:
            log(
                f"  {row['runtime']:<16} batch {row['batch']:>3}  median {row['median_ms']:>9.2f} ms"
                f"  p90 {row['p90_ms']:>9.2f} ms  {row['images_per_s']:>8.1f} img/s"
            )
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2) + "\n")
    return result
