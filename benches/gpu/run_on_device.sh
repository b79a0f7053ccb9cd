#!/usr/bin/env bash
# Runs on the GPU host (after benches/gpu/prepare.sh here): the GPU tests, then the benchmark
# of painn and of the PyTorch implementation of the same weights, side by side, on one GPU.
#   bash benches/gpu/run_on_device.sh [tests|bench|all] [max atoms]
set -uo pipefail
cd "$(dirname "$0")/../.."
what=${1:-all}
max_atoms=${2:-1000000}
out=${OUT:-/tmp/painn-out}
mkdir -p "$out"
nvrtc=$(ls -d /usr/local/cuda*/lib64 2>/dev/null | head -1)
export LD_LIBRARY_PATH="${nvrtc}:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}"
export PAINN_REPOSITORY=$PWD PAINN_SHARED_DIR=$PWD/.device/shared
export PAINN_STUDENT_MODEL=$PWD/.device/models/student_427k.safetensors
export PAINN_CACHE_DIR=/tmp/painn-kernels
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if [ "$what" = tests ] || [ "$what" = all ]; then
    for t in cuda engine engine_reference; do
        echo "== test-$t =="
        .device/bin/test-$t --test-threads=1 --nocapture 2>&1 | tee "$out/test-$t.log" | grep -E "^test |on NVIDIA|relative dE|identical|builds|bytes|SKIPPED|panicked|test result|FAILED|failures|left|right" | head -80
    done
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
    echo "== painn bench (cuda, f32) =="
    .device/bin/painn bench --model "$PAINN_STUDENT_MODEL" --device cuda --max-atoms "$max_atoms" \
        --write-structures /tmp/painn-structures --json | tee "$out/bench-painn.jsonl"
    echo "== PyTorch (same weights, same GPU) =="
    PYTHONUNBUFFERED=1 python3 python/scripts/bench_gpu.py "$PAINN_STUDENT_MODEL" /tmp/painn-structures \
        --max-atoms 24576 | tee "$out/bench-torch.jsonl"
fi
