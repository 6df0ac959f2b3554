#!/usr/bin/env bash
# The GPU half of issue #8 in one device call: the GPU tests, then the latency table on CUDA.
#
# The device machine is bare and offline: its python3 has torch, torchvision, onnx, onnxruntime (CPU build),
# onnxscript, transformers, pytest and hypothesis, but not prunec (run from the checkout through PYTHONPATH)
# and not torch-pruning (a pure-Python wheel, carried). onnxruntime-gpu is too large to carry (over the
# 64 MiB limit), so ONNX Runtime's CUDA/TensorRT providers cannot run there: the GPU table is measured on
# the PyTorch runtime (torch.compile on CUDA), and the ORT CUDA tests skip cleanly.
#
# Before the call, on this machine (once per session; .device/ is ignored by git):
#   mkdir -p .device/wheels && pip download torch-pruning --no-deps -d .device/wheels
# Then: run(command="bash benchmarks/gpu_check.sh", carry=[".device"], timeout_s=540)
# Results come back under $OUT: gpu_tests.log, latency_gpu_torch.md/.json, latency_gpu.log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/prunec-gpu}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=python3
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
if ls .device/wheels/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-deps --no-index .device/wheels/*.whl 2>&1 | tail -2
fi
$PY -c "import torch, torchvision, onnxruntime; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'ort', onnxruntime.__version__, onnxruntime.get_available_providers())"
timeout 120 $PY -m pytest -q -rs tests/test_backend.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
timeout 400 $PY benchmarks/latency.py --runtime torch --provider cuda --batches 1,64 --runs 30 \
    --out "$OUT/latency_gpu_torch.md" 2>&1 | tee "$OUT/latency_gpu.log" | tail -25
