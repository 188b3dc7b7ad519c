"""Time the Triton kernels at other GPU block sizes than kernels.triton.BLOCKS, at the sizes issue
7's targets name, to check on a GPU that the sizes chosen without one (the largest that spill no
registers on sm_90, tests/test_kernels_compile.py) are also fast:

    python scripts/triton_blocks.py        # a table: op, block sizes, ms (median), vs the chosen

Compositing forward + backward at 1M rays x 128 samples; the fused trilinear+SH forward and forward
+ backward on a 512^3 grid at 1M samples; TV (l2, 27 channels) over every voxel of a 256^3 grid.
Same inputs as the benchmark (tests/bench/test_bench_kernels.py). Times by
triton.testing.do_bench (median of repeated runs after warm-up, caches flushed between runs).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernels import triton as kt
from kernels.render import composite
from kernels.sample import sample_grid_sh
from kernels.tv import tv_from_rows
from tests.bench.test_bench_kernels import _grid_and_samples, _packed, _tv_inputs

# GPU sizes to try besides the chosen ones (kernels.triton.BLOCKS), which are timed first
NAMES = {"composite": ("composite_rays", "composite_samples"), "samples": ("samples",), "tv": ("tv",)}
OTHERS = {
    "composite": [(4, 32), (16, 32), (8, 64), (16, 64), (32, 32)],
    "samples": [(16,), (64,), (128,)],
    "tv": [(16,), (64,), (128,), (256,)],
}


def candidates(family: str) -> list[dict[str, int]]:
    names = NAMES[family]
    chosen = tuple(kt.BLOCKS[n][1] for n in names)
    return [dict(zip(names, sizes)) for sizes in [chosen] + [o for o in OTHERS[family] if o != chosen]]


def _ops():
    sigma0, rgb0, ray, t, (g_rgb, g_acc, g_depth) = _packed(1048576, 128)
    sigma, rgb = sigma0.clone().requires_grad_(), rgb0.clone().requires_grad_()

    def composite_fwd_bwd():
        o = composite(sigma, rgb, 0.01, ray, 1048576, t=t, impl="triton")
        torch.autograd.grad([o["rgb"], o["acc"], o["depth"]], [sigma, rgb], [g_rgb, g_acc, g_depth])

    density0, sh0, coords, dirs, sray, _, (g_sigma, g_c) = _grid_and_samples(512, 8192)
    density, sh = density0.clone().requires_grad_(), sh0.clone().requires_grad_()

    def sample_fwd():
        with torch.no_grad():
            sample_grid_sh(density, sh, coords, dirs, 512, ray_index=sray, impl="triton")

    def sample_fwd_bwd():
        out = sample_grid_sh(density, sh, coords, dirs, 512, ray_index=sray, impl="triton")
        torch.autograd.grad(out, [density, sh], [g_sigma, g_c])

    values0, row, nbs, _ = _tv_inputs(256, None)
    values = values0.clone().requires_grad_()

    def tv_fwd_bwd():
        torch.autograd.grad(tv_from_rows(values, row, nbs, impl="triton"), [values])

    return [("composite_fwd_bwd 1M x 128", "composite", composite_fwd_bwd),
            ("sample_grid_sh_fwd 512^3, 1M", "samples", sample_fwd),
            ("sample_grid_sh_fwd_bwd 512^3, 1M", "samples", sample_fwd_bwd),
            ("tv_fwd_bwd 256^3, all", "tv", tv_fwd_bwd)]


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("triton_blocks.py times Triton kernels on a CUDA GPU; torch sees none")
    from triton.testing import do_bench

    chosen = dict(kt.BLOCKS)
    print(f"{'op':36s} {'GPU block sizes':40s} {'ms':>8s} {'vs chosen':>9s}", flush=True)
    for label, family, fn in _ops():
        base = None
        for sizes in candidates(family):
            for name, gpu in sizes.items():
                kt.BLOCKS[name] = (chosen[name][0], gpu)
            try:
                ms = do_bench(fn, warmup=50, rep=200)
            except Exception as exc:  # e.g. out of resources at a large tile: report, go on
                print(f"{label:36s} {str(sizes):40s} failed: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
                continue
            finally:
                kt.BLOCKS.update(chosen)
            base = ms if base is None else base
            print(f"{label:36s} {str(sizes):40s} {ms:8.3f} {base / ms:8.2f}x", flush=True)


if __name__ == "__main__":
    main()
