"""Gathering the rows a training step touches into small leaf tensors.

Autograd on the full grid would allocate and scan a dense gradient as large as the grid every
step; instead the step works on `data[active]` and writes back only those rows (see optim.py).
"""

from __future__ import annotations

import torch


def touched_rows(n_rows: int, *indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted unique rows (k,) among `indices` (any shapes, values in [0, n_rows), -1 ignored)
    and the map (n_rows,) from a row to its position in them (-1 where untouched)."""
    device = indices[0].device
    mask = torch.zeros(n_rows + 1, dtype=torch.bool, device=device)  # last slot absorbs -1
    for idx in indices:
        mask.index_fill_(0, idx.reshape(-1).long(), True)
    mask = mask[:n_rows]
    active = torch.nonzero(mask)[:, 0]
    local = torch.full((n_rows,), -1, dtype=torch.long, device=device)
    local[active] = torch.arange(active.shape[0], device=device)
    return active, local


def lookup(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """table[index] for a 1-D table and an index of any shape (index_select is the fast path)."""
    return table.index_select(0, index.reshape(-1)).view(index.shape)


def remap(local: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`index` translated through `local`, keeping -1 as -1."""
    return torch.where(index >= 0, lookup(local, index.clamp(min=0)), index)
