#!/usr/bin/env bash
# Prepare, on a machine with network, what scripts/gpu_check.sh needs on a GPU host without one:
#   .whl/       wheels of the packages the host lacks (pure Python; the host has their dependencies)
#   .gpu_data/  lego 200x200 copied out of data/ (whose links to ../shared do not travel)
# Both folders are git-ignored. Then, with the device tool:
#   run(command="OUT=$OUT bash scripts/gpu_check.sh", carry=[".whl", ".gpu_data"], timeout_s=590)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d .whl gin-config submitit lpips nerfacc==0.5.3
src=data/nerf_synthetic/lego_200
[ -e "$src/transforms_train.json" ] || { echo "$src is missing: run 'make data' first" >&2; exit 1; }
rm -rf .gpu_data && mkdir -p .gpu_data && cp -rL "$src" .gpu_data/lego_200
ls .whl && du -sh .whl .gpu_data
