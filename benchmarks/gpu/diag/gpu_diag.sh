#!/bin/bash
# One-call GPU diagnosis of the served ResNet-50 collapse (~6 min). From the repository root, after the wheels
# (onnxruntime-gpu 1.31.1, bentoml 1.4.40, ... and py-spy) are installed: . /tmp/gpu-env.sh; OUT=$OUT bash DIAG/gpu_diag.sh
# Every result is written as soon as it exists, so a timeout still returns what ran. CONFIGS trims the served part.
set -uo pipefail
REPO=$PWD; DIAG=$(cd "$(dirname "$0")" && pwd); OUT=${OUT:-/tmp/diag-out}; mkdir -p "$OUT"
export PYTHONPATH=$REPO:$DIAG/site:${PYTHONPATH:-} BENTOML_HOME=${BENTOML_HOME:-/tmp/diag-bentoml} BENTOML_DO_NOT_TRACK=true
export XDG_CACHE_HOME=/tmp/diag-cache   # fresh optimised-graph cache and batch profiles
DUR=${DURATION:-5}; TAG=resnet50-fp16-u8
CONFIGS=${CONFIGS:-A_buckets F_one_session_any_shape C_fixed64 G_cuda_graph B_batch1 D_suspects_off}
step() { echo "== $(date +%T) $*" | tee -a "$OUT/steps.txt"; }

step env; { nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c 'import onnxruntime as o, bentoml; print(o.__version__, o.get_available_providers(), bentoml.__version__)'; command -v py-spy; nproc; } >"$OUT/env.txt" 2>&1
step export
python3 -m cnnserve.cli export resnet50 --precision fp16 --input-dtype uint8 >"$OUT/export.txt" 2>&1 || { step "export failed"; exit 1; }

step "pure onnxruntime shape test"
timeout 150 python3 "$DIAG/ort_shapes.py" "$TAG" "$OUT" --cudnn-log >"$OUT/ort_shapes.log" 2>&1; step "ort rc=$?"

variant() {  # a patched copy of the tree for configurations that need a code change
  local dir=/tmp/variant-$1; rm -rf "$dir"; mkdir -p "$dir"
  (cd "$REPO" && tar --exclude=.git --exclude=.venv -cf - .) | tar -xf - -C "$dir"; echo "$dir"; }
for cfg in $CONFIGS; do
  step "served $cfg"; dir=$REPO; envs=()
  case $cfg in
    A_buckets) ;;  # the fix: one shape per CUDA session, buckets from the model's curve
    F_one_session_any_shape) envs=(--env CNNSERVE_BATCH_BUCKETS=none) ;;  # what the service did before the fix
    C_fixed64) envs=(--env CNNSERVE_MODEL_MAX_BATCH_SIZE=64 --env CNNSERVE_BATCH_BUCKETS=64) ;;  # one shape only
    G_cuda_graph) envs=(--env CNNSERVE_CUDA_GRAPH=true) ;;
    B_batch1) envs=(--env CNNSERVE_MODEL_MAX_BATCH_SIZE=1) ;;
    E_fixed64_blocking) envs=(--env CNNSERVE_MODEL_MAX_BATCH_SIZE=64 --env CNNSERVE_BATCH_BUCKETS=64 --env DIAG_BLOCKING_SYNC=1) ;;
    D_suspects_off)
      dir=$(variant plain)
      sed -i 's/    shared_arena: bool = True/    shared_arena: bool = False/' "$dir/service/runtime/sessions.py"
      envs=(--env CNNSERVE_ORT_CACHE=false --env CNNSERVE_IO_BINDING=false --env CNNSERVE_INTRA_OP_THREADS=1 --env CNNSERVE_MODEL_INFLIGHT=1) ;;
  esac
  (cd "$dir" && PYTHONPATH=$dir:$DIAG/site timeout 120 python3 "$DIAG/serve_diag.py" "$cfg" "$OUT" --model $TAG \
      --duration "$DUR" --levels 16,64 "${envs[@]}" >"$OUT/$cfg.log" 2>&1); step "$cfg rc=$?"
done
python3 - "$OUT" <<'PY' | tee "$OUT/summary.txt"
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
for f in sorted(out.glob("*_*.json")):
    if f.name.startswith("ort_"): continue
    r = json.loads(f.read_text())
    for l in r.get("levels", []):
        print(f'{r["name"]:22s} c={l["clients"]:3d} {l["img_s"]:8.1f} img/s  runs/s {l["runs_s"]:6.1f}  img/run {l["images_per_run"]:6.2f}  '
              f'ms/run {l["ms_per_run"]:7.1f}  model-tier {l["cores_busy"]["model_tier"]:.2f} cores = {l["model_tier_cpu_ms_per_image"]:6.2f} ms/img '
              f'{l["model_tier_cpu_ms_per_run"]:6.1f} ms/run  GPU {l["gpu_percent"]}%')
for row in json.loads((out / "ort_shapes.json").read_text()) if (out / "ort_shapes.json").exists() else []:
    print("ort", json.dumps(row))
PY
step done
