"""Triton total variation over rows of a (sparse) grid: value and gradient.

Each program takes BLOCK_M centre rows and all C channels (a (BLOCK_M, CP) tile), reads the
centre and its +x, +y, +z neighbour rows (-1: no difference along that axis), and writes one
partial sum (summed by torch afterwards, so the value is deterministic). Backward recomputes the
differences and scatters with tl.atomic_add:
  d/d centre = -2 f sum_a Delta_a,  d/d neighbour_a = 2 f Delta_a,
with f = 1 ('squared') or 1 / (2 sqrt(total)) where total >= eps ('l2', else 0, as the
reference's clamp), all times grad / (present centres * C).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton import padded_cols, row_block


@triton.jit
def _tv(val_ptr, row_ptr, nb_ptr, part_ptr, g_ptr, d_ptr, M, C, eps,
        L2: tl.constexpr, BACKWARD: tl.constexpr, BLOCK_M: tl.constexpr, CP: tl.constexpr):
    pid = tl.program_id(0)
    i = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    c = tl.arange(0, CP)
    imask = i < M
    row = tl.load(row_ptr + i, mask=imask, other=-1).to(tl.int64)
    present = imask & (row >= 0)
    row = tl.maximum(row, 0)
    m = present[:, None] & (c < C)[None, :]
    centre = tl.load(val_ptr + row[:, None] * C + c[None, :], mask=m, other=0.0)
    n0 = tl.load(nb_ptr + i, mask=imask, other=-1).to(tl.int64)
    n1 = tl.load(nb_ptr + M + i, mask=imask, other=-1).to(tl.int64)
    n2 = tl.load(nb_ptr + 2 * M + i, mask=imask, other=-1).to(tl.int64)
    m0 = m & (n0 >= 0)[:, None]
    m1 = m & (n1 >= 0)[:, None]
    m2 = m & (n2 >= 0)[:, None]
    p0 = tl.maximum(n0, 0)[:, None] * C + c[None, :]
    p1 = tl.maximum(n1, 0)[:, None] * C + c[None, :]
    p2 = tl.maximum(n2, 0)[:, None] * C + c[None, :]
    d0 = tl.where(m0, tl.load(val_ptr + p0, mask=m0, other=0.0) - centre, 0.0)
    d1 = tl.where(m1, tl.load(val_ptr + p1, mask=m1, other=0.0) - centre, 0.0)
    d2 = tl.where(m2, tl.load(val_ptr + p2, mask=m2, other=0.0) - centre, 0.0)
    total = d0 * d0 + d1 * d1 + d2 * d2
    if not BACKWARD:
        if L2:
            v = tl.where(total > 0, tl.sqrt(tl.maximum(total, eps)), 0.0)
        else:
            v = total
        tl.store(part_ptr + pid, tl.sum(tl.sum(tl.where(m, v, 0.0), axis=1), axis=0))
    else:
        g = tl.load(g_ptr)  # upstream gradient / (present centres * C)
        if L2:
            f = tl.where((total > 0) & (total >= eps), 0.5 / tl.sqrt(tl.maximum(total, eps)), 0.0)
        else:
            f = total * 0.0 + 1.0
        f = 2.0 * f * g
        tl.atomic_add(d_ptr + row[:, None] * C + c[None, :], -f * (d0 + d1 + d2), mask=m)
        tl.atomic_add(d_ptr + p0, f * d0, mask=m0)
        tl.atomic_add(d_ptr + p1, f * d1, mask=m1)
        tl.atomic_add(d_ptr + p2, f * d2, mask=m2)


def _cfg(values, M):
    cp = padded_cols(values.shape[1])
    bm = row_block("tv", values.device, cp)
    return bm, (triton.cdiv(max(M, 1), bm),), cp


def tv_sum(values, row, neighbours, l2: bool, eps: float):
    """Sum over present centres and channels of the per-element TV term (0-dim tensor)."""
    M = row.shape[0]
    bm, grid, cp = _cfg(values, M)
    part = torch.zeros(grid[0], device=values.device, dtype=values.dtype)
    if M:
        _tv[grid](values, row, neighbours, part, part, part, M, values.shape[1], eps,
                  L2=l2, BACKWARD=False, BLOCK_M=bm, CP=cp)
    return part.sum()


def tv_backward(values, row, neighbours, l2: bool, eps: float, grad_scaled):
    """d(sum TV * grad_scaled)/d values (N, C); grad_scaled a 1-element tensor."""
    M = row.shape[0]
    d = torch.zeros_like(values)
    if M:
        bm, grid, cp = _cfg(values, M)
        _tv[grid](values, row, neighbours, d, grad_scaled, d, M, values.shape[1], eps,
                  L2=l2, BACKWARD=True, BLOCK_M=bm, CP=cp)
    return d
