#!/usr/bin/env bash
# Issue 7's GPU checks in one run of under 10 minutes (docs/benchmarks.md), in order of value, each
# step with its own time limit and its output under $OUT as it goes (a run stopped early still
# returns what it measured):
#   0. device, driver, torch, Triton                                       -> device.txt
#   1. in the background: build the CUDA C++ compositing extension and nerfacc's (if installed)
#                                                                          -> build.log
#   2. the benchmark cases the targets name: compositing at 1M rays x 128 samples (torch, compile,
#      triton, cuda, nerfacc), fused trilinear+SH at 512^3 (fwd, fwd+bwd), TV at 128^3 (a draw of
#      131072 voxels, as Plenoxels draws) and 256^3 (every voxel)       -> bench.json, bench.log
#   3. Plenoxels training throughput on the GPU with the fast kernels and with the torch reference
#      (same steps, same data)                                             -> plenoxels_{auto,torch}.log
#   4. the kernels' correctness tests on CUDA tensors (impl='cuda' after its build) -> tests.log
#   5. the Triton kernels at other block sizes than kernels.triton.BLOCKS   -> bench.log
#   6. Nsight Compute on one launch of each Triton kernel at the targets' sizes, with the time left
#                                                                          -> ncu.log
# Uses the interpreter in $PYTHON (default python3) without a venv.
#
# A GPU host without network lacks gin-config, submitit and lpips (and nerfacc, the peer), and data/
# links to ../shared, which does not travel. scripts/gpu_prepare.sh (run here first) puts their
# wheels in .whl (installed into /tmp/site by this script) and lego 200x200 in .gpu_data. The call:
#   run(command="OUT=$OUT bash scripts/gpu_check.sh", carry=[".whl", ".gpu_data"], timeout_s=590)
set -uo pipefail
PYTHON=${PYTHON:-python3}
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-8}
START=$SECONDS
stamp() { echo "== $1 at $((SECONDS - START)) s"; }
if [ -d .whl ]; then
    $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

# 0. the device
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    $PYTHON -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
    nvcc --version | tail -1
} > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"

# 1. extension builds, in the background (torch's build lock makes a benchmark or test that needs
#    an extension wait for its build instead of starting another)
{
    stamp "build start"
    timeout 300 $PYTHON -c "from kernels.cuda.composite import module; module(); print('CUDA C++ compositing extension built')" &
    timeout 300 $PYTHON -m tests.bench.nerfacc_peer
    wait
    stamp "build end"
} > "$OUT/build.log" 2>&1 &
BUILD=$!

# 2. the benchmark cases the targets name (criterion 2)
stamp bench
timeout 250 $PYTHON -m pytest tests/bench/test_bench_kernels.py -p no:cacheprovider --override-ini addopts= -q -rs \
    -k "1048576x128 or (sample and 512) or (tv and (131072 or 256))" \
    --benchmark-json="$OUT/bench.json" 2>&1 | tee "$OUT/bench.log" | tail -30

# 3. Plenoxels training throughput on the GPU with and without the kernels (criterion 3)
stamp plenoxels
LEGO=.gpu_data/lego_200
[ -e $LEGO/transforms_train.json ] || LEGO=data/nerf_synthetic/lego_200
if [ -e $LEGO/transforms_train.json ]; then
    for k in auto torch; do
        timeout 80 $PYTHON scripts/plenoxels_speed.py --data $LEGO --iterations 800 \
            --test-views 5 --bind "Plenoxels.kernels = '$k'" --bind "Plenoxels.device = 'cuda'" \
            > "$OUT/plenoxels_$k.log" 2>&1
        grep -E "steady|^iterations|PSNR" "$OUT/plenoxels_$k.log" || tail -5 "$OUT/plenoxels_$k.log"
    done
else
    echo "lego 200x200 is missing: run scripts/gpu_prepare.sh here and carry .gpu_data"
fi

# 4. correctness on the GPU: the tests CI runs in interpreter mode, now on CUDA tensors, and the
#    CUDA C++ kernel against the reference once its build is done
stamp tests
timeout 110 $PYTHON -m pytest -q -p no:cacheprovider tests/test_kernels_*.py tests/test_plenoxels_kernels.py \
    -m "not slow" -k "not cuda" 2>&1 | tee "$OUT/tests.log" | tail -4
wait $BUILD
tail -4 "$OUT/build.log"
timeout 60 $PYTHON -m pytest -q -p no:cacheprovider tests/test_kernels_composite.py -k cuda 2>&1 \
    | tee -a "$OUT/tests.log" | tail -3

# 5. the Triton kernels at other block sizes than the chosen ones (appended to bench.log)
stamp "block sizes"
timeout 90 $PYTHON scripts/triton_blocks.py 2>&1 | tee -a "$OUT/bench.log" | tail -20

# 6. what limits the kernels (Nsight Compute), with the time that is left of the 10-minute call
left=$((570 - (SECONDS - START)))
if command -v ncu >/dev/null && [ $left -gt 60 ]; then
    stamp "ncu ($left s left)"
    timeout $left ncu --section SpeedOfLight --section Occupancy --section MemoryWorkloadAnalysis \
        -k regex:"_sample_sh|_fwd|_bwd" $PYTHON scripts/kernel_profile.py > "$OUT/ncu.log" 2>&1
    grep -E "^  _|Duration|DRAM Throughput|Memory Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Registers Per" \
        "$OUT/ncu.log" | head -60
fi
stamp done
