"""Ops for radiance-field rendering: a PyTorch reference (the specification) beside fast kernels.

Every public op takes `impl` (see kernels/_impl.py): 'torch' (reference), 'triton', 'cuda',
'auto' (Triton on CUDA tensors when triton imports, else the reference). Hot ops and what they have:

| op | torch | triton | cuda |
| --- | --- | --- | --- |
| render.composite (packed compositing, fwd + bwd) | yes | yes | yes (C++, JIT) |
| render.early_termination (transmittance >= threshold) | yes | yes | yes |
| sample.sample_grid_sh (trilinear density + SH, fused SH eval, fwd + bwd) | yes | yes | - |
| grid.interpolate (weighted gather of rows, fwd + bwd) | yes | yes | - |
| tv.tv_from_rows / tv.total_variation (value + gradient) | yes | yes | - |

Index-arithmetic helpers (ray_aabb, march, segment_starts, transmittance, world_to_grid,
cell_index, flat_index, trilinear_corners, tv_neighbours, sh_basis) have the reference only.
Nothing is imported or built at import time: kernels.triton.* import triton and kernels.cuda.*
build the extension only when a fast impl is asked for. Use the submodules directly:
`kernels.render`, `kernels.sample`, `kernels.grid`, `kernels.sh`, `kernels.tv`.
"""
