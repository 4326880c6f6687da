"""Export models with seeded random weights to plain ONNX files (no model store), for the GPU scripts.

    python3 benchmarks/gpu/export_files.py OUT_DIR resnet50:fp16 resnet50:fp32 lenet5:fp16 ...

fp16 variants take uint8 input (the GPU variant the README recommends). A model that fails to export is reported
and skipped, so one bad export does not cost the whole device call."""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

from cnnserve.export import export_model


def main(out: Path, items: list[str]) -> int:
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for item in items:
        name, _, precision = item.partition(":")
        precision = precision or "fp32"
        path = out / f"{name}-{precision}.onnx"
        if path.exists():
            continue
        start = time.perf_counter()
        try:
            export_model(
                name,
                weights="random",
                precision=precision,
                input_dtype="uint8" if precision == "fp16" else "float32",
                output=path,
                save=False,
            )
            print(f"exported {path} in {time.perf_counter() - start:.1f}s", flush=True)
        except Exception:
            failed += 1
            print(f"FAILED {item}:\n{traceback.format_exc(limit=3)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2:]))
