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

from harness.evaluation.image import psnr, to_8bit

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


def score_composed(methods: dict, split, options: dict, classify: list[Block] | None = None,
                   alone: bool = True, progress=None) -> dict:
    """Compose every view of `split` from `methods` ({block: BlockNeRF}) under compose `options`
    (appearance matching off) and score it as the compose record does (8-bit render). Views are
    classed by the regions of `classify` (default: the methods' own blocks), so a one-block control can
    be classed by the partition it is compared with. With `alone`, every view blended from two or more
    blocks is also scored as each of those blocks' own render (the images the blend is made of). Returns per-view rows and `seam_summary`
    (plus, over the blended views, the blend, the nearest block alone and the best block alone)."""
    from baselines.block_nerf.compose import DEFAULTS, blend, render_blocks  # compose uses this module's summary

    opts = {**DEFAULTS, **options, "appearance_matching": False}
    classify = classify if classify is not None else [methods[k].block for k in sorted(methods)]
    part = methods[min(methods)].scored_part  # the left-half protocol scores the right half
    rows = []
    for i in range(len(split)):
        images, weights, info = render_blocks(methods, split, i, opts, None)
        gt = part(split.images[i])
        score = lambda img: psnr(to_8bit(part(np.clip(img, 0, 1))), gt)  # noqa: E731
        row = {"name": split.names[i], "psnr": score(blend(images, weights)), "blocks": info["blocks"],
               "regions": in_regions(split.cameras.c2w[i, :, 3], classify)}
        if alone and len(images) > 1:
            row["alone"] = [score(img) for img in images]
        rows.append(row)
        if progress is not None:
            progress(i + 1, len(split))
    out = {"views": rows, **seam_summary([r["psnr"] for r in rows], [r["regions"] for r in rows])}
    blended = [r for r in rows if "alone" in r]
    if blended:
        out["blended"] = {"n": len(blended), "blend": float(np.mean([r["psnr"] for r in blended])),
                          "nearest_alone": float(np.mean([r["alone"][0] for r in blended])),  # nearest first
                          "best_alone": float(np.mean([max(r["alone"]) for r in blended]))}
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
