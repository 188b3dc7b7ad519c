"""Rendering novel views from several blocks (Block-NeRF section 4.3).

For a camera: take the blocks whose centre lies within `select_radius` x their radius of it (the nearest
one if none), drop those whose mean predicted visibility of the view is below `visibility_threshold`
(keeping at least the most visible; with `visibility_region`, samples outside the block's radius count as
invisible, so a block behind the camera or hidden behind nearer geometry scores low), render the rest and
blend them in image space with inverse-distance weights w_i ~ |camera - centre_i|^-p (the paper used p = 4
and p = 1 on its two datasets).
Appearance matching: with the networks frozen, a block's appearance code is optimised so its render of a
view both blocks see matches its already-matched neighbour's render, starting from a root block and
propagating breadth-first over overlapping neighbours. It is off by default: with codes per
`appearance_id` every block learned each condition's code from that condition's own images, so the
codes already agree, and replacing them by a fit to a neighbour's (imperfect) render lowered the
composed PSNR by 0.65 dB in run 5 (docs/block_nerf.md). Matching is what makes blocks agree when the
codes do not share a meaning across blocks (per-image codes, or an appearance chosen by hand).

`Composition` is the entry point `harness compose` calls for one variant/seed's finished blocks: it
composes the views; the harness saves and scores them.
"""

from __future__ import annotations

import logging
import time
from collections import deque

import numpy as np
import torch

from baselines.block_nerf import protocol as proto
from baselines.block_nerf.partition import Block
from baselines.block_nerf.seam import in_regions, seam_summary
from harness.core.data.rays import image_rays, rays_for_pixels
from harness.core.data.scene import Split
from harness.core.metrics.image import psnr, to_8bit

log = logging.getLogger(__name__)
DEFAULTS = {"power": 4.0, "select_radius": 1.0, "visibility_threshold": 0.1, "visibility_stride": 8,
            "visibility_mean": "samples", "visibility_region": False,
            "appearance_matching": False, "root_block": 0, "match_steps": 60, "match_lr": 0.05, "match_rays": 1024,
            "max_blocks": 0}


def idw_weights(distances, power: float, eps: float = 1e-6) -> np.ndarray:
    """Inverse-distance weights (sum 1) for blocks at `distances` from the camera."""
    d = np.maximum(np.asarray(distances, dtype=np.float64), eps)
    w = d ** (-float(power))
    return w / w.sum()


def candidates(position: np.ndarray, blocks: list[Block], select_radius: float) -> list[int]:
    """Blocks within select_radius x radius of the camera, nearest first (the nearest alone if none)."""
    dist = np.array([np.linalg.norm(position - b.center) for b in blocks])
    inside = [i for i in np.argsort(dist) if dist[i] <= select_radius * blocks[i].radius]
    return inside or [int(np.argmin(dist))]


def blend(images: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    return np.tensordot(np.asarray(weights, dtype=np.float32), np.stack(images).astype(np.float32), axes=1)


def neighbours(blocks: list[Block]) -> dict[int, list[int]]:
    """Blocks whose regions overlap (centre distance < sum of radii), nearest first."""
    out = {}
    for a in blocks:
        dist = [(float(np.linalg.norm(a.center - b.center)), b.index) for b in blocks if b.index != a.index]
        out[a.index] = [i for d, i in sorted(dist) if d < a.radius + blocks[i].radius]
    return out


def shared_view(a, b, cameras) -> int:
    """Index of the camera (of `cameras`) nearest the midpoint of blocks a and b: a view both see."""
    mid = (a.block.center + b.block.center) / 2
    return int(np.argmin(np.linalg.norm(cameras.c2w[:, :, 3] - mid, axis=1)))


def match_code(target_method, target_code, method, init_code, origins, directions, exposure: float,
               steps: int, lr: float, rays: int, seed: int) -> tuple[torch.Tensor, dict]:
    """`method`'s code optimised (networks frozen) so its render of the rays matches `target_method`'s
    render with `target_code`; returns the code and the mean squared difference before/after."""
    with torch.no_grad():
        target = target_method.render_rays(origins, directions, target_code, exposure)["fine"]["rgb"].float()

    def diff(code):
        with torch.no_grad():
            rgb = method.render_rays(origins, directions, code, exposure)["fine"]["rgb"].float()
        return float(((rgb - target) ** 2).mean())

    before = diff(init_code)
    method.field.eval()
    with proto.frozen(method.field):
        code = proto.fit_code(lambda o, d, c: method.render_rays(o, d, c, exposure)["fine"]["rgb"].float(),
                              init_code, origins, directions, target, steps, lr, rays, seed)
    after = diff(code)
    if after > before:  # never make it worse: keep the code it started from
        code, after = init_code.detach(), before
    return code, {"mse_before": before, "mse_after": after}


def match_appearance(methods: dict, codes: dict, cameras, options: dict) -> tuple[dict, list]:
    """Propagate appearance from the root block: `codes` {block: code} -> matched codes, and a log of
    every matched pair. Matching uses a subsample of the shared view's rays."""
    blocks = [methods[k].block for k in sorted(methods)]
    adj = neighbours(blocks)
    root = options["root_block"] if options["root_block"] in methods else min(methods)
    matched, order, log_rows = {root: codes[root]}, deque([root]), []
    while order:
        a = order.popleft()
        for b in adj[a]:
            if b in matched or b not in methods:
                continue
            cam = shared_view(methods[a], methods[b], cameras)
            o, d = image_rays(cameras, cam)
            pick = torch.arange(0, o.shape[0], max(1, o.shape[0] // options["match_rays"]), device="cpu")
            code, info = match_code(methods[a], matched[a], methods[b], codes[b], o[pick], d[pick], 1.0,
                                    options["match_steps"], options["match_lr"], options["match_rays"], seed=a * 97 + b)
            matched[b] = code
            log_rows.append({"from": a, "to": b, "view": cam, **info})
            order.append(b)
    for k in methods:  # blocks not connected to the root keep their own code
        matched.setdefault(k, codes[k])
    return matched, log_rows


def _left_rays(split: Split, i: int):
    w, h = split.cameras.width, split.cameras.height
    pix = proto.half_pixels(w, h, "left")
    o, d = rays_for_pixels(split.cameras, np.full(pix.shape, i), (pix % w).astype(np.float32) + 0.5,
                           (pix // w).astype(np.float32) + 0.5)
    return o, d, torch.from_numpy(split.images[i].reshape(-1, 3)[pix])


def compose_view(methods: dict, split: Split, i: int, options: dict, matched: dict | None) -> tuple[np.ndarray, dict]:
    """The composed render of view i (full image; the caller crops for the left-half protocol)."""
    images, weights, info = render_blocks(methods, split, i, options, matched)
    return blend(images, weights), info


def render_blocks(methods: dict, split: Split, i: int, options: dict,
                  matched: dict | None) -> tuple[list[np.ndarray], np.ndarray, dict]:
    """View i rendered by each block the composition selects (nearest first, full images), their IDW
    weights and the view's record (blocks, weights, visibility, in_blocks)."""
    pos = split.cameras.c2w[i, :, 3].astype(np.float64)
    blocks = [methods[k].block for k in sorted(methods)]
    chosen = candidates(pos, blocks, options["select_radius"])
    if options["max_blocks"] > 0:
        chosen = chosen[:options["max_blocks"]]
    o, d = image_rays(split.cameras, i)
    vis = {}
    if options["visibility_threshold"] > 0 and len(chosen) > 1:
        pick = torch.arange(0, o.shape[0], options["visibility_stride"], device="cpu")
        weighted = {"samples": False, "weights": True}[options.get("visibility_mean", "samples")]
        vis = {k: methods[k].mean_visibility(o[pick], d[pick], weighted, bool(options.get("visibility_region", False)))
               for k in chosen
               if methods[k].field.visibility is not None}
        if vis:
            kept = [k for k in chosen if vis.get(k, 1.0) >= options["visibility_threshold"]]
            chosen = kept or [max(vis, key=vis.get)]
    exposure = float(split.exposure[i]) if split.exposure is not None else 1.0
    images = []
    for k in chosen:
        m = methods[k]
        if m.protocol == "appearance_id":
            code = (matched or {}).get(k, {}).get(int(split.appearance_id[i]),
                                                  m.codes.detach()[int(split.appearance_id[i])])
        elif m.protocol == "left_half":
            lo, ld, target = _left_rays(split, i)
            with proto.frozen(m.field):
                def render_rgb(oo, dd, c, m=m):
                    return m.render_rays(oo, dd, c, exposure if m.use_exposure else 1.0)["fine"]["rgb"].float()

                code = proto.fit_code(render_rgb, m.default_code(), lo, ld, target, m.fit["steps"],
                                      m.fit["lr"], m.fit["rays"], seed=k * 1009 + i)
        else:
            code = None
        m.view = {"code": code, "exposure": exposure if m.use_exposure else 1.0}
        try:
            rgb = m.render(o, d)["rgb"].reshape(split.cameras.height, split.cameras.width, 3).numpy()
        finally:
            m.view = {"code": None, "exposure": 1.0}
        images.append(rgb)
    dist = [np.linalg.norm(pos - methods[k].block.center) for k in chosen]
    w = idw_weights(dist, options["power"])
    info = {"blocks": [int(k) for k in chosen], "weights": [round(float(x), 4) for x in w],
            "visibility": {str(k): round(v, 4) for k, v in vis.items()},
            "in_blocks": in_regions(pos, blocks)}
    return images, w, info


class Composition:
    """The test views of `scene` composed from finished blocks `methods` ({block index: BlockNeRF}):
    `views()` yields (name, image, target) as scored, for the harness to save and score
    (harness.run.evaluation); `record(scores)` adds what the compose record keeps beside the scores
    (options, matching log, blocks per view, the seam check). `harness compose` builds one per
    variant/seed (the `run` entry of Sweep.compose)."""

    def __init__(self, methods: dict, scene, options: dict):
        unknown = set(options) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"compose options: unknown {sorted(unknown)} (known: {sorted(DEFAULTS)})")
        self.opts = {**DEFAULTS, **options}
        if self.opts["visibility_mean"] not in ("samples", "weights"):
            raise ValueError(f"compose option visibility_mean must be 'samples' or 'weights', "
                             f"got {self.opts['visibility_mean']!r}")
        self.methods, self.split = methods, scene.split("test")
        self.first = methods[min(methods)]
        self.t0 = time.perf_counter()
        self.matched, self.match_log = self._match(scene)
        self.infos: dict = {}

    def _match(self, scene) -> tuple[dict | None, list]:
        if not (self.opts["appearance_matching"] and self.first.protocol == "appearance_id" and len(self.methods) > 1):
            return None, []
        matched, log = {k: {} for k in self.methods}, []
        for a_id in sorted(set(int(a) for a in self.split.appearance_id)):
            codes = {k: m.codes.detach()[a_id] for k, m in self.methods.items()}
            out, rows = match_appearance(self.methods, codes, scene.split("train").cameras, self.opts)
            for k, code in out.items():
                matched[k][a_id] = code
            log += [{"appearance_id": a_id, **r} for r in rows]
        return matched, log

    def views(self):
        for i in range(len(self.split)):
            img, info = compose_view(self.methods, self.split, i, self.opts, self.matched)
            self.infos[self.split.names[i]] = info
            view = (self.split.names[i], self.first.scored_part(img), self.first.scored_part(self.split.images[i]))
            masks = self.split.masks  # the dataset's protocol: transient objects not scored
            yield view if masks is None else (*view, self.first.scored_part(masks[i]))

    def record(self, scores: dict) -> dict:
        per_view = scores["per_view"]
        for name, info in self.infos.items():
            per_view[name].update(info)
        seam = seam_summary([v["psnr"] for v in per_view.values()], [v["in_blocks"] for v in per_view.values()])
        return {"options": self.opts, "appearance_protocol": self.first.protocol_record(self.split),
                "appearance_matching": self.match_log,
                "blocks": [self.methods[k].block.as_record() for k in sorted(self.methods)],
                "blocks_rendered_mean": float(np.mean([len(v["blocks"]) for v in self.infos.values()])),
                "seam": {k: seam[k] for k in ("psnr_overlap", "n_overlap", "psnr_interior", "n_interior")},
                "compose_time": round(time.perf_counter() - self.t0, 3)}


def score_composed(methods: dict, split, options: dict, classify: list[Block] | None = None,
                   alone: bool = True, progress=None) -> dict:
    """Compose every view of `split` from `methods` ({block: BlockNeRF}) under compose `options`
    (appearance matching off) and score it as the compose record does (8-bit render). Views are
    classed by the regions of `classify` (default: the methods' own blocks), so a one-block control can
    be classed by the partition it is compared with. With `alone`, every view blended from two or more
    blocks is also scored as each of those blocks' own render (the images the blend is made of). Returns
    per-view rows and `seam_summary` (plus, over the blended views, the blend, the nearest block alone and
    the best block alone)."""
    opts = {**DEFAULTS, **options, "appearance_matching": False}
    classify = classify if classify is not None else [methods[k].block for k in sorted(methods)]
    part = methods[min(methods)].scored_part  # the left-half protocol scores the right half
    rows = []
    for i in range(len(split)):
        images, weights, info = render_blocks(methods, split, i, opts, None)
        gt = part(split.images[i])
        mask = part(split.masks[i]) if split.masks is not None else None

        def score(img, gt=gt, mask=mask):
            return psnr(to_8bit(part(np.clip(img, 0, 1))), gt, mask=mask)

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
