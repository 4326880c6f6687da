#!/bin/bash
# The service on the GPU with measured batch limits: exports ResNet-50 fp16 (uint8 input) and the LeNet-5 demo in
# fp16, serves both with `bentoml serve` (two tiers on CUDA), prints each model's batch limit from /models, checks
# one answer, and loads it for a few seconds at 64 clients. Run after `. /tmp/gpu-env.sh`:
#   OUT=/some/dir bash benchmarks/gpu/check_service.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/cnnserve-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-}
export BENTOML_HOME=${BENTOML_HOME:-/tmp/cnnserve-bentoml-check} BENTOML_DO_NOT_TRACK=true
PORT=${PORT:-3123}
step() { echo "== $(date +%T) $*"; }

step "export"
python3 -m cnnserve.cli export resnet50 --precision fp16 --input-dtype uint8 2>&1 | grep -v "W:onnxruntime" | tail -2
python3 -m cnnserve.cli export lenet5 --weights demo --precision fp16 2>&1 | grep -v "W:onnxruntime" | tail -2
python3 -c 'import io, skimage.data; from PIL import Image; Image.fromarray(skimage.data.astronaut()).resize((640, 480)).save("/tmp/photo.jpg", quality=90)'

step "serve"
CNNSERVE_MODELS=resnet50-fp16-u8,lenet5-fp16 setsid bentoml serve --port "$PORT" --host 127.0.0.1 >"$OUT/serve.log" 2>&1 &
server=$!
for _ in $(seq 1 180); do
  curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break
  kill -0 $server 2>/dev/null || { echo "server exited"; tail -50 "$OUT/serve.log"; exit 1; }
  sleep 1
done
curl -s "http://127.0.0.1:$PORT/models" >"$OUT/models.json"
python3 - "$OUT/models.json" <<'PY'
import json, sys
for m in json.load(open(sys.argv[1]))["models"]:
    b = m.get("batching") or {}
    print(m["name"], m["ready"], m["providers"][:1], "limit", b.get("max_batch_size"), b.get("source"),
          b.get("reference"), b.get("measured_on"), "shed after", b.get("shed_after_ms"), m.get("error"))
PY
curl -s -F image=@/tmp/photo.jpg -F model=resnet50-fp16-u8 "http://127.0.0.1:$PORT/classify" | head -c 300; echo

step "64 clients, 8 s"
timeout 60 python3 -m cnnserve.cli bench http "http://127.0.0.1:$PORT" --model resnet50-fp16-u8 --image /tmp/photo.jpg \
  --concurrency 64 --duration 8 --output "$OUT/load.json" 2>&1 | tail -2
curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^cnnserve_batch_size_(sum|count)' | tee "$OUT/batch_metrics.txt"
grep -E "batch limit|fell back|ready:" "$OUT/serve.log" | head -20
kill -TERM -- -$server 2>/dev/null; sleep 2; kill -KILL -- -$server 2>/dev/null
step "done"
