#!/usr/bin/env bash
# Issue 7's GPU checks in one run, sized to fit a 10-minute device call (docs/benchmarks.md):
#   1. the CUDA tests of the kernels (Triton and the CUDA C++ compositing kernel against the reference),
#   2. the kernel benchmarks at the sizes the targets name (1M rays x 128 samples; 512^3 grid),
#   3. Plenoxels rays/s on lego with the fast kernels and with the torch reference.
# Everything it measures lands in $OUT (default ./gpu_out): device.txt, tests.log, bench.json, bench.log,
# plenoxels_{auto,torch}.log. Uses the interpreter in $PYTHON (default python3) without a venv.
#
# A GPU host without network lacks gin-config, submitit and lpips: download their wheels here first
# (see the device notes), e.g.
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl gin-config submitit lpips cloudpickle
# and pass .whl along; this script installs them into /tmp/site when the folder is there. data/ links
# to ../shared, which does not travel: name data/nerf_synthetic/lego_200 in the device call's carry.
set -uo pipefail
PYTHON=${PYTHON:-python3}
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
    $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    $PYTHON -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"

# 1. correctness on the GPU (the same tests CI runs in interpreter mode, now on CUDA tensors)
timeout 150 $PYTHON -m pytest -q -p no:cacheprovider tests/test_kernels_*.py -m "not slow" 2>&1 | tee "$OUT/tests.log" | tail -3

# 2. the benchmark cases the targets name, plus the smallest size of each op for the curve's start
timeout 300 $PYTHON -m pytest tests/bench/test_bench_kernels.py -p no:cacheprovider --override-ini addopts= -q -rs \
    -k "1048576x128 or 4096x64 or 512 or 65536 or 131072" \
    --benchmark-json="$OUT/bench.json" 2>&1 | tee "$OUT/bench.log" | tail -25

# 3. Plenoxels training throughput with and without the kernels (same steps, same data)
if [ -d data/nerf_synthetic/lego_200 ]; then
    for k in auto torch; do
        timeout 60 $PYTHON scripts/plenoxels_speed.py --data data/nerf_synthetic/lego_200 --iterations 1000 --test-views 5 \
            --bind "Plenoxels.kernels = '$k'" > "$OUT/plenoxels_$k.log" 2>&1
        tail -3 "$OUT/plenoxels_$k.log"
    done
fi
