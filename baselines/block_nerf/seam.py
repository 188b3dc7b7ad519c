"""Seam checks of a composed Block-NeRF (issue 8: "at a block boundary, IDW blending gives no seam").

A view is in the *overlap* when its camera lies inside two or more block regions (there the
composition blends blocks) and in a block *interior* when it lies inside one. `seam_summary` compares
the mean PSNR of the two sets. Views differ in difficulty (on the street the overlaps sit at the
intersections, which look down the cross streets), so the same comparison for a model that blends
nothing (one block over the whole street) on the same views is the control: a seam is the part of
the gap the control does not show. `score_composed` also scores every blended view as rendered by each
of its blocks alone, so the blend can be compared with the block nearest the camera and the best single block.
"""

from __future__ import annotations

import numpy as np

from baselines.block_nerf.partition import Block


def in_regions(position: np.ndarray, blocks: list[Block]) -> int:
    """How many block regions (centre within radius) hold the camera at `position`."""
    return int(sum(np.linalg.norm(np.asarray(position, np.float64) - b.center) <= b.radius for b in blocks))


def seam_summary(psnrs, regions) -> dict:
    """Mean PSNR over all views, the overlap (regions >= 2) and the interiors (regions == 1), and
    `gap` = interior - overlap (None where a set is empty)."""
    psnrs, regions = np.asarray(psnrs, np.float64), np.asarray(regions)
    if psnrs.shape != regions.shape:
        raise ValueError(f"seam_summary: {psnrs.shape[0]} PSNRs but {regions.shape[0]} region counts")
    over, inner = psnrs[regions >= 2], psnrs[regions == 1]
    mean = lambda x: float(x.mean()) if x.size else None  # noqa: E731
    out = {"psnr": mean(psnrs), "psnr_overlap": mean(over), "n_overlap": int(over.size),
           "psnr_interior": mean(inner), "n_interior": int(inner.size)}
    out["gap"] = out["psnr_interior"] - out["psnr_overlap"] if over.size and inner.size else None
    return out


def paired_seam(psnr_a, regions_a, psnr_b, regions_b) -> dict:
    """Two partitions A and B composed on the same views (per-view PSNRs and region counts under each):
    every view in one partition's overlap and the other's interior is rendered once as an overlap view
    and once as an interior view. Returns the mean PSNR of those views as overlap and as interior, and
    `seam` = interior - overlap (positive: the overlap is worse), pooled and per direction."""
    pa, pb = np.asarray(psnr_a, np.float64), np.asarray(psnr_b, np.float64)
    ra, rb = np.asarray(regions_a), np.asarray(regions_b)
    if not pa.shape == pb.shape == ra.shape == rb.shape:
        raise ValueError("paired_seam: both partitions must be scored on the same views")
    a_over, b_over = (ra >= 2) & (rb == 1), (rb >= 2) & (ra == 1)

    def side(over, inner):
        if not over.size:
            return {"n": 0, "psnr_overlap": None, "psnr_interior": None, "seam": None}
        return {"n": int(over.size), "psnr_overlap": float(over.mean()), "psnr_interior": float(inner.mean()),
                "seam": float(inner.mean() - over.mean())}

    return {**side(np.concatenate([pa[a_over], pb[b_over]]), np.concatenate([pb[a_over], pa[b_over]])),
            "a_overlap": side(pa[a_over], pb[a_over]), "b_overlap": side(pb[b_over], pa[b_over])}
