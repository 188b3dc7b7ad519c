"""Triton kernels behind `impl='triton'`. Importing any submodule imports triton; the public ops
in `kernels.*` import these lazily, only when a Triton implementation is asked for.

Block sizes: the interpreter (TRITON_INTERPRET=1, CPU tensors) runs each program as vectorised
NumPy, so it wants few, large programs; a GPU wants many small ones. `block(name, device)` picks;
`row_block` scales it for tiles of wider rows.
"""

from __future__ import annotations

# (interpreter, GPU) block sizes; tests shrink the interpreter ones to exercise multi-chunk loops.
# The GPU sizes are the largest whose sm_90 code (4 warps) spills no registers: compiled ahead of
# time without a GPU, larger tiles spilled (composite backward at 16 x 64, sampling at 128 and 64,
# TV at 256 to 64; tests/test_kernels_compile.py holds every variant to no spills).
BLOCKS = {
    "composite_rays": (256, 8),    # rays per program
    "composite_samples": (64, 32),  # samples per chunk of a ray
    "samples": (1024, 32),         # samples per program (grid sampling, interpolate)
    "tv": (1024, 32),              # voxels per program
}


def block(name: str, device) -> int:
    interp, gpu = BLOCKS[name]
    return gpu if getattr(device, "type", device) == "cuda" else interp


def padded_cols(c: int) -> int:
    """Columns of a tile that holds rows of `c` values: the next power of two, at least 2."""
    return 1 << max(c - 1, 1).bit_length()


def row_block(name: str, device, cols: int) -> int:
    """Rows per program for tiles of `cols` padded columns: BLOCKS[name] is sized for up to 32;
    wider rows (SH degree 3: 48 -> 64) get proportionally fewer, so the tile, and the registers it
    takes, stay the same size."""
    return max(1, block(name, device) * 32 // max(cols, 32))
