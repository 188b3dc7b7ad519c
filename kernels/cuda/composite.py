"""Loader and Python face of the CUDA C++ compositing kernel (composite.cu).

Built once per process by torch.utils.cpp_extension.load (cached on disk under
TORCH_EXTENSIONS_DIR); needs CUDA, nvcc and a C++ compiler. Same functions and return values as
kernels/triton/composite.py so kernels.render.composite can switch between them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kernels._impl import build_once

SOURCE = Path(__file__).with_name("composite.cu")


def unavailable_reason() -> str | None:
    """Why the CUDA kernel cannot run here, or None when it can be built and run."""
    if not torch.cuda.is_available():
        return "CUDA is not available (no GPU or driver)"
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME is None:
        return "CUDA toolkit (nvcc) not found: set CUDA_HOME"
    return None


@build_once
def module():
    """The compiled extension (built on the first call; a failed build is raised again, not rebuilt)."""
    from torch.utils.cpp_extension import load

    return load(name="nerf_harness_composite", sources=[str(SOURCE)],
                extra_cuda_cflags=["-O3", "--use_fast_math"], verbose=False)


def _empty(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty(0)


def composite_forward(sigma, rgb, delta, t, start, count, write_weights: bool = True):
    has_delta = isinstance(delta, torch.Tensor)
    color, acc, depth, weights = module().forward(
        sigma, rgb, delta if has_delta else _empty(sigma), 0.0 if has_delta else float(delta),
        t if t is not None else _empty(sigma), start, count)
    return color, acc, depth if t is not None else None, weights


def composite_backward(sigma, rgb, delta, t, start, count, g_rgb, g_acc, g_depth, g_w, total,
                       need_delta: bool, need_t: bool):
    has_delta = isinstance(delta, torch.Tensor)
    e = _empty(sigma)
    d_sigma, d_rgb, d_delta, d_t = module().backward(
        sigma, rgb, delta if has_delta else e, 0.0 if has_delta else float(delta),
        t if t is not None else e, start, count, g_rgb, g_acc, g_depth if g_depth is not None else e,
        g_w if g_w is not None else e, total, need_delta, need_t)
    return d_sigma, d_rgb, d_delta if need_delta else None, d_t if need_t else None


def transmittance(sigma_delta, start, count):
    return module().transmittance(sigma_delta, start, count)
