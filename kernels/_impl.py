"""Choosing an implementation for an op (`impl=` argument of every public kernel)."""

from __future__ import annotations

IMPLS = ("auto", "torch", "triton", "cuda")


def resolve_impl(impl: str, op: str) -> str:
    """The implementation to run for `op`; only the PyTorch reference exists for now."""
    if impl in ("auto", "torch"):
        return "torch"
    if impl in ("triton", "cuda"):
        raise NotImplementedError(f"kernels.{op}: impl='{impl}' is not built yet (use impl='torch')")
    raise ValueError(f"kernels.{op}: unknown impl {impl!r} (allowed: {', '.join(IMPLS)})")
