#!/bin/bash
# Issue 7 on the lent GPU machine, in one go (bring onnxruntime-gpu and BentoML there as benchmarks/gpu/RESULTS.md
# says, then `. /tmp/gpu-env.sh`):
#   OUT=/some/dir bash benchmarks/gpu/tune.sh
# 1. exports each family's representative (seeded random weights; fp16 with uint8 input, ResNet-50 also fp32),
# 2. `cnnserve tune` on CUDA: each one's batch-cost curve → a family defaults file for CUDA,
# 3. benchmarks/gpu/cuda_options.py: cudnn_conv_algo_search, io-binding, a wrong device id, on ResNet-50 fp16.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/cnnserve-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-}
export BENTOML_HOME=/tmp/cnnserve-bentoml BENTOML_DO_NOT_TRACK=true CNNSERVE_ORT_CACHE_DIR=/tmp/cnnserve-ort
FILES=/tmp/cnnserve-files
MODELS=${MODELS:-resnet50:fp16 resnet50:fp32 lenet5:fp16 alexnet:fp16 googlenet:fp16 densenet121:fp16 efficientnet_b0:fp16 vit_b_16:fp16 unet:fp16 cae:fp16 yolov1_shapes:fp16 vgg16:fp16 fasterrcnn_resnet50_fpn:fp16}
step() { echo "== $(date +%T) $*"; }

step "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, onnxruntime as o; print("torch", torch.__version__, torch.cuda.is_available(), "| onnxruntime", o.__version__, o.get_available_providers())'

step "export"
timeout ${EXPORT_TIMEOUT:-240} python3 benchmarks/gpu/export_files.py "$FILES" $MODELS 2>&1 | grep -v "W:onnxruntime"
ls -la "$FILES"

step "cnnserve tune on CUDA"
files=""
for m in $MODELS; do f="$FILES/${m%%:*}-${m#*:}.onnx"; [ -f "$f" ] && files="$files $f"; done
timeout ${TUNE_TIMEOUT:-240} python3 -m cnnserve.cli tune $files --budget-ms 250 \
  --profiles "$OUT/profiles.json" --defaults "$OUT/batching_defaults_cuda.json" 2>&1 | grep -v "W:onnxruntime"

step "CUDA options on resnet50 fp16"
timeout ${OPTIONS_TIMEOUT:-120} python3 benchmarks/gpu/cuda_options.py --file "$FILES/resnet50-fp16.onnx" \
  --output "$OUT/cuda_options.json" 2>&1 | grep -v "W:onnxruntime"
step "done"
