#!/bin/sh
# BentoML's docker.setup_script (bentofile.yaml): runs once while `bentoml containerize` builds the image, after the
# bento's Python requirements are installed into /app/.venv.
#
# The bento's requirements hold onnxruntime-gpu without CUDA, so a plain virtual environment made from them serves on
# CPU. The image adds the CUDA 13 runtime and cuDNN 9 libraries that onnxruntime-gpu 1.31 is built against, as
# NVIDIA's pip wheels (the `cuda` and `cudnn` extras), and registers their folders with the dynamic loader. The same
# image then runs on a CPU-only host (no driver: the service picks the CPU provider) and on a GPU host, which needs
# only an NVIDIA driver recent enough for CUDA 13 (>= 580) and the NVIDIA container toolkit.
set -eu
uv pip install --no-cache "onnxruntime-gpu[cuda,cudnn]==1.31.1"
python - > /etc/ld.so.conf.d/cnnserve-nvidia.conf <<'PY'
import pathlib

import nvidia

for root in nvidia.__path__:
    for lib in sorted({p.parent for p in pathlib.Path(root).rglob("*.so*")}):
        print(lib)
PY
ldconfig
