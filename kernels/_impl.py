"""Choosing an implementation for an op (`impl=` argument of every public kernel).

- 'torch': the PyTorch reference (the specification), any device.
- 'triton': the Triton kernel; needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set
  before triton is first imported (the interpreter: slow, for tests).
- 'cuda': the CUDA C++ kernel (compositing only), JIT-built on first use; needs CUDA tensors.
- 'auto': 'triton' when the inputs are CUDA tensors and triton imports, else 'torch'.

Helper ops that are index arithmetic (ray-box, marching, corner indices, neighbour lookup) have
only the reference: they accept 'auto'/'torch' and reject the others with a ValueError naming
what exists. Nothing here imports triton or builds anything until a fast impl is asked for.
"""

from __future__ import annotations

import functools
import os

import torch

IMPLS = ("auto", "torch", "triton", "cuda")


@functools.cache
def triton_available() -> bool:
    try:
        import triton
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install: fall back to the reference
        return False
    return True


def build_once(build):
    """`build()` (no arguments) run once per process, its result or its exception kept: a failed
    build (minutes of compiling) raises the same error again at once for every later test or
    benchmark case, where functools.lru_cache alone would retry it, since it caches no exceptions.
    `.cache_clear()` forgets the outcome."""

    @functools.lru_cache(maxsize=1)
    def attempt():
        try:
            return build(), None
        except Exception as exc:  # a compile or link error: kept, so it is reported, not rebuilt
            return None, exc

    @functools.wraps(build)
    def once():
        value, error = attempt()
        if error is not None:
            raise error
        return value

    once.cache_clear = attempt.cache_clear
    return once


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


FAST_DTYPES = (torch.float32, torch.float64)  # what the Triton/CUDA kernels compute in


def resolve_impl(impl: str, op: str, device: torch.device | str | None = None,
                 provides: tuple[str, ...] = ("torch",), dtype: torch.dtype | None = None) -> str:
    """The implementation to run for `op` on tensors of `dtype` on `device`, among those it
    `provides`. 'auto' keeps the reference for dtypes the fast kernels do not take."""
    if impl not in IMPLS:
        raise ValueError(f"kernels.{op}: unknown impl {impl!r} (allowed: {', '.join(IMPLS)})")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    fast_dtype = dtype is None or dtype in FAST_DTYPES
    if impl == "auto":
        return ("triton" if "triton" in provides and dev.type == "cuda" and fast_dtype
                and triton_available() else "torch")
    if impl not in provides:
        raise ValueError(f"kernels.{op}: impl={impl!r} is not provided for this op "
                         f"(it has: {', '.join(provides)}; see kernels/__init__.py)")
    if impl != "torch" and not fast_dtype:
        raise ValueError(f"kernels.{op}: impl={impl!r} takes float32 or float64, got {dtype}")
    if impl == "triton":
        if not triton_available():
            raise RuntimeError(f"kernels.{op}: impl='triton' but triton does not import")
        if dev.type != "cuda" and not triton_interpreted():
            raise RuntimeError(f"kernels.{op}: impl='triton' needs CUDA tensors (got {dev}); on the "
                               "CPU set TRITON_INTERPRET=1 before importing triton")
    if impl == "cuda" and dev.type != "cuda":
        raise RuntimeError(f"kernels.{op}: impl='cuda' needs CUDA tensors (got {dev})")
    return impl
