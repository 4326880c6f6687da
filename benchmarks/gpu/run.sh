#!/bin/bash
# The whole GPU check of issue 16 in one device call (~9 min): the shape diagnosis, the fix served against the
# configuration before it, and `cnnserve bench serve` (cnnserve two-tier vs the peers) with the fix.
# On the lent GPU machine, from the repository root, after `bash ../shared/gpu/unpack.sh install` (onnxruntime-gpu,
# BentoML and the serving extras: `bash ../shared/gpu/pack.sh onnxruntime-gpu==1.31.1 bentoml==1.4.40 simplejpeg uvloop
# httptools py-spy==0.4.3`, then the device calls it prints) and `. /tmp/gpu-env.sh`:
#   OUT=$OUT bash benchmarks/gpu/run.sh
# Every step writes into $OUT as soon as it has something, so a timeout still returns what ran; the headline
# results land in benchmarks/gpu/results.json (keys: device, served_img_s_64, peer_bentoml_img_s_64,
# peer_torch_img_s_64, raw_ort_fp16_img_s_bs64, p99_ms_64) and are copied to $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/cnnserve-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-}
export BENTOML_HOME=${BENTOML_HOME:-/tmp/cnnserve-bentoml} BENTOML_DO_NOT_TRACK=true XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/cnnserve-cache}
MODEL=${MODEL:-resnet50}
TAG=$MODEL-fp16-u8
CLIENTS=${CLIENTS:-1,16,64,256}
PEER_CLIENTS=${PEER_CLIENTS:-64}
API_WORKERS=${API_WORKERS:-12}
DURATION=${DURATION:-8}
step() { echo "== $(date +%T) $*" | tee -a "$OUT/steps.txt"; }

step "environment"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import torch, onnxruntime as o, bentoml; print("torch", torch.__version__, torch.cuda.is_available(), "| onnxruntime", o.__version__, o.get_available_providers(), "| bentoml", bentoml.__version__)'
  python3 -c 'import simplejpeg, uvloop, httptools; print("simplejpeg uvloop httptools: ok")'
  nproc; } 2>&1 | tee "$OUT/env.txt"

step "export $MODEL fp16 uint8-input"
python3 -m cnnserve.cli export "$MODEL" --precision fp16 --input-dtype uint8 >"$OUT/export.txt" 2>&1 || { step "export failed"; tail "$OUT/export.txt"; exit 1; }

step "GPU parity (fp16 uint8 ONNX on CUDA vs PyTorch fp32 on CPU, same weights)"
[ -n "${SKIP_PARITY:-}" ] || timeout 120 python3 benchmarks/gpu/parity.py --tag "$TAG" --output "$OUT/parity.json" >"$OUT/parity.log" 2>&1 || echo "parity step failed"

step "shape diagnosis without a server (same shape vs alternating vs one session per shape; cuDNN plan counts)"
timeout ${DIAG_TIMEOUT:-150} python3 benchmarks/gpu/diag/ort_shapes.py "$TAG" "$OUT" --cudnn-log >"$OUT/ort_shapes.log" 2>&1; step "ort_shapes rc=$?"

step "served: the fix (A_buckets) and the service before it (F_one_session_any_shape), 64 clients"
for cfg in A_buckets F_one_session_any_shape; do
  envs=(); [ "$cfg" = F_one_session_any_shape ] && envs=(--env CNNSERVE_BATCH_BUCKETS=none)
  PYTHONPATH=$PWD:$PWD/benchmarks/gpu/diag/site timeout 100 python3 benchmarks/gpu/diag/serve_diag.py "$cfg" "$OUT" \
    --model "$TAG" --duration "$DURATION" --levels 64 "${envs[@]}" >"$OUT/$cfg.log" 2>&1; step "$cfg rc=$?"
done

step "bench serve (the fix, against raw onnxruntime and the peers)"
timeout ${BENCH_TIMEOUT:-330} python3 -m cnnserve.cli bench serve --model "$TAG" \
  --api-workers "$API_WORKERS" --duration "$DURATION" \
  --clients "$CLIENTS" --peer-clients "$PEER_CLIENTS" --peer-workers 4 --raw-batches "${RAW_BATCHES:-1,8,64}" \
  --output benchmarks/gpu/results.json >"$OUT/bench_serve.log" 2>&1
rc=$?
cp benchmarks/gpu/results.json benchmarks/gpu/summary.md "$OUT/" 2>/dev/null
logs=$(python3 -c 'import json; print(json.load(open("benchmarks/gpu/results.json"))["logs"])' 2>/dev/null)
[ -n "$logs" ] && for f in "$logs"/*.log; do echo "=== $f"; tail -c 12000 "$f"; done >"$OUT/server-logs.txt"
step "done (bench rc=$rc)"
exit $rc
