#!/bin/bash
# The GPU benchmark of issue 10, in one go, on the lent GPU machine (see benchmarks/gpu/RESULTS.md for how to
# bring onnxruntime-gpu and BentoML there). Run from the repository root after `. /tmp/gpu-env.sh`:
#   OUT=/some/dir bash benchmarks/gpu/run.sh
# Exports ResNet-50 as an fp16 model with uint8 input (random weights: ImageNet weights cannot be downloaded
# there; speed does not depend on the weights), checks it on the GPU against PyTorch, then runs
# `cnnserve bench serve` (cnnserve two-tier vs the peers, 640x480 JPEG uploads, 1/16/64/256 clients).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/cnnserve-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-}
export BENTOML_HOME=${BENTOML_HOME:-/tmp/cnnserve-bentoml} BENTOML_DO_NOT_TRACK=true
MODEL=${MODEL:-resnet50}
TAG=$MODEL-fp16-u8
CLIENTS=${CLIENTS:-1,16,64,256}
PEER_CLIENTS=${PEER_CLIENTS:-1,64}
API_WORKERS=${API_WORKERS:-12}
JPEG_DRAFT=${JPEG_DRAFT:-1.0,0.9}
DURATION=${DURATION:-8}
step() { echo "== $(date +%T) $*"; }

step "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, onnxruntime as o, bentoml; print("torch", torch.__version__, torch.cuda.is_available(), "| onnxruntime", o.__version__, o.get_available_providers(), "| bentoml", bentoml.__version__)'
nproc

step "export $MODEL fp16 uint8-input"
if ! python3 -m cnnserve.cli export "$MODEL" --precision fp16 --input-dtype uint8 2>&1 | tail -4; then
  echo "export failed"; exit 1
fi

step "GPU parity (fp16 uint8 ONNX on CUDA vs PyTorch fp32 on CPU, same weights)"
[ -n "${SKIP_PARITY:-}" ] || timeout 120 python3 benchmarks/gpu/parity.py --tag "$TAG" --output "$OUT/parity.json" || echo "parity step failed"

step "bench serve"
timeout ${BENCH_TIMEOUT:-420} python3 -m cnnserve.cli bench serve --model "$TAG" \
  --api-workers "$API_WORKERS" --jpeg-draft "$JPEG_DRAFT" --duration "$DURATION" \
  --clients "$CLIENTS" --peer-clients "$PEER_CLIENTS" --peer-workers 4 --raw-batches "${RAW_BATCHES:-1,8,64,256}" \
  --output benchmarks/gpu/results.json
rc=$?
cp benchmarks/gpu/results.json benchmarks/gpu/summary.md "$OUT/" 2>/dev/null
logs=$(python3 -c 'import json; print(json.load(open("benchmarks/gpu/results.json"))["logs"])' 2>/dev/null)
[ -n "$logs" ] && for f in "$logs"/*.log; do echo "=== $f"; tail -c 12000 "$f"; done >"$OUT/server-logs.txt"
step "done (bench rc=$rc)"
exit $rc
