"""Launch each Triton kernel once at the sizes issue 7's targets name, for Nsight Compute:

    ncu --section SpeedOfLight --section Occupancy --section MemoryWorkloadAnalysis \
        -k regex:"_sample_sh|_fwd|_bwd" python scripts/kernel_profile.py

The fused trilinear+SH forward and backward on a 512^3 grid at 1M samples, and compositing forward
+ backward at 1M rays x 128 samples: the same inputs as the benchmark (tests/bench/
test_bench_kernels.py), built before any profiled launch. Each op runs twice, a warm-up that
compiles and the launch to read; Speed Of Light says whether a kernel is bound by memory (DRAM
throughput near its peak) or by latency (both throughputs low, few warps active).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernels.render import composite
from kernels.sample import sample_grid_sh
from tests.bench.test_bench_kernels import _grid_and_samples, _packed


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("kernel_profile.py profiles the Triton kernels on a CUDA GPU; torch sees none")
    res, n_rays = 512, 8192
    density0, sh0, coords, dirs, ray, _, (g_sigma, g_rgb) = _grid_and_samples(res, n_rays)
    density, sh = density0.clone().requires_grad_(), sh0.clone().requires_grad_()
    sigma0, rgb0, pray, t, (c_rgb, c_acc, c_depth) = _packed(1048576, 128)
    sigma, rgb = sigma0.clone().requires_grad_(), rgb0.clone().requires_grad_()
    for _ in range(2):
        out = sample_grid_sh(density, sh, coords, dirs, res, ray_index=ray, impl="triton")
        torch.autograd.grad(out, [density, sh], [g_sigma, g_rgb])
        o = composite(sigma, rgb, 0.01, pray, 1048576, t=t, impl="triton")
        torch.autograd.grad([o["rgb"], o["acc"], o["depth"]], [sigma, rgb], [c_rgb, c_acc, c_depth])
    torch.cuda.synchronize()
    print("profiled: sample_grid_sh fwd+bwd at 512^3 x 1M samples, composite fwd+bwd at 1M x 128")


if __name__ == "__main__":
    main()
