"""Temporal flicker of rendered video: the flow-warping error and its ground-truth floor.

The measure is the "warping error" of Lai et al. 2018 (Learning Blind Video Temporal Consistency, ECCV):
frame t+1 is warped back onto frame t along the forward flow t -> t+1 and compared with frame t
over the pixels the flow marks valid. Ground-truth frames have a nonzero error too (shading changes,
occlusion edges, bilinear resampling), so a render's number is reported beside the truth's (the floor).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from harness.core.errors import MetricError
from harness.core.metrics.image import prepare, to_8bit

# Stored with every flicker result, so a number says how it was computed (docs/evaluation.md).
WARP_PROTOCOL = {
    "measure": "warping error (Lai et al. 2018, ECCV), per camera over consecutive time steps",
    "warp": ("backward: frame t+1 is sampled at each pixel centre of frame t displaced by the forward flow "
             "t -> t+1 (pixel centres at integer + 0.5), aligning frame t+1 onto frame t"),
    "interpolation": "bilinear between the 4 nearest pixel centres; no padding or extrapolation",
    "pixels": ("valid where the flow is finite (not occluded, in the next image) and the sample lies within the "
               "pixel-centre grid [0.5, W - 0.5] x [0.5, H - 0.5]; the same pixels for render and truth"),
    "error": ("squared difference averaged over valid pixels and RGB channels (Lai et al.'s per-pixel squared "
              "L2 norm divided by 3, the scale of the scorer's MSE); then the unweighted mean over the T - 1 pairs"),
    "quantization": "rendered frames as saved 8-bit: round(clip(x, 0, 1) * 255) / 255; truth as given",
    "floor": "the same measure on the ground-truth frames with the same flows",
    "excess": ("rendered - truth; can be negative (a blurry or frozen render is smoother in time than the truth), "
               "so it is read beside per-frame PSNR, never alone"),
    "ratio": "rendered / truth; the camera mean is the ratio of the means; inf if truth is 0, 1 if both are",
    "mean": "unweighted mean over cameras",
    "regions": ("'still': the valid pixels whose flow is exactly (0, 0) (static content under a camera that does not "
                "move: no resampling, so only a change of the content counts), 'moving': the other valid pixels; "
                "each the mean over the pairs that have such pixels (None if none has)"),
}


def _check_flow(flow, shape: tuple[int, int], name: str | None) -> np.ndarray:
    f = np.asarray(flow)
    if f.ndim != 3 or f.shape[-1] != 2 or not np.issubdtype(f.dtype, np.floating):
        raise MetricError(f"{_where(name)}flow has shape {f.shape} and dtype {f.dtype}, expected float (H, W, 2)")
    if f.shape[:2] != shape:
        raise MetricError(f"{_where(name)}flow shape {f.shape} does not match the image's height x width {shape}")
    return f


def _where(name: str | None) -> str:
    return f"view {name!r}: " if name else ""


def warp(image, flow, name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(warped (H, W, C) float64, valid (H, W) bool): `image` sampled at each pixel displaced by `flow`.

    warp(frame_{t+1}, flow_{t -> t+1}) aligns frame t+1 onto frame t. Pixel (i, j) has its centre at
    (j + 0.5, i + 0.5) and flow (du, dv) points to (j + 0.5 + du, i + 0.5 + dv); the half pixels cancel,
    so the sample sits at array position (i + dv, j + du). Invalid pixels (NaN flow, or a sample outside
    the pixel-centre grid, where bilinear interpolation would need padding) are NaN in `warped`.
    """
    img = np.asarray(image)
    if img.ndim != 3 or not (np.issubdtype(img.dtype, np.floating) or np.issubdtype(img.dtype, np.integer)):
        raise MetricError(f"{_where(name)}image has shape {img.shape} and dtype {img.dtype}, expected float (H, W, C)")
    h, w = img.shape[:2]
    f = _check_flow(flow, (h, w), name).astype(np.float64)
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    y, x = rows + f[..., 1], cols + f[..., 0]
    with np.errstate(invalid="ignore"):  # NaN flow compares False: invalid
        valid = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    x, y = np.where(valid, x, 0.0), np.where(valid, y, 0.0)
    # The left/top neighbour stays one short of the last pixel, so a sample on the last centre gets weight 1
    # on it (and integer shifts copy values exactly: the other weights are exactly 0).
    x0 = np.clip(np.floor(x), 0, max(w - 2, 0)).astype(np.int64)
    y0 = np.clip(np.floor(y), 0, max(h - 2, 0)).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    src = img.astype(np.float64)
    top = src[y0, x0] * (1.0 - fx) + src[y0, x1] * fx
    bottom = src[y1, x0] * (1.0 - fx) + src[y1, x1] * fx
    warped = top * (1.0 - fy) + bottom * fy
    warped[~valid] = np.nan
    return warped, valid


def warping_error(frames: Sequence, flows: Sequence, quantize: bool = True, name: str = "sequence") -> dict:
    """Warping error of one camera's frames (time order) with its T - 1 forward flows.

    Per pair t: mean over valid pixels and channels of (I_t - warp(I_{t+1}, flow_t))^2; the result is the
    mean over pairs. Frames are validated like the scorer's views (float [0, 1], RGBA composited on white)
    and, with `quantize`, taken as saved 8-bit. Returns {'warp_error', 'pairs', 'valid_fraction'} (the
    share of pixels compared, over all pairs), and the same error over the 'still' pixels (flow exactly 0)
    and the 'moving' ones, 'warp_error_still' and 'warp_error_moving' (None when no pair has such pixels).
    """
    if len(frames) < 2:
        raise MetricError(f"{name}: warping error needs at least 2 frames, got {len(frames)}")
    if len(flows) != len(frames) - 1:
        raise MetricError(f"{name}: {len(frames)} frames need {len(frames) - 1} flows (t -> t+1), got {len(flows)}")
    imgs = [prepare(fr, f"{name} t{t}", "frame") for t, fr in enumerate(frames)]
    if quantize:
        imgs = [to_8bit(im) for im in imgs]
    errors, kept = [], []
    regions: dict[str, list[float]] = {"still": [], "moving": []}
    for t in range(len(imgs) - 1):
        view = f"{name} t{t}"
        if imgs[t + 1].shape != imgs[t].shape:
            raise MetricError(f"{_where(view)}frame shape {imgs[t].shape} != next frame's {imgs[t + 1].shape}")
        warped, valid = warp(imgs[t + 1], flows[t], view)
        if not valid.any():
            raise MetricError(f"{_where(view)}no valid pixel (flow all NaN or pointing outside the image)")
        square = np.where(valid[..., None], imgs[t].astype(np.float64) - np.nan_to_num(warped), 0.0) ** 2
        errors.append(float(np.mean(square[valid])))
        kept.append(float(valid.mean()))
        still = valid & (np.asarray(flows[t]) == 0).all(-1)
        for region, mask in (("still", still), ("moving", valid & ~still)):
            if mask.any():
                regions[region].append(float(np.mean(square[mask])))
    out: dict = {"warp_error": float(np.mean(errors)), "pairs": len(errors), "valid_fraction": float(np.mean(kept))}
    out.update({f"warp_error_{r}": float(np.mean(v)) if v else None for r, v in regions.items()})
    return out


def _ratio(rendered: float, truth: float) -> float:
    if truth > 0:
        return rendered / truth
    return math.inf if rendered > 0 else 1.0


def flicker(rendered: Mapping, truth: Mapping, flows: Mapping) -> dict:
    """Temporal flicker of rendered sequences against the ground truth's own warping error (the floor).

    Each argument maps a camera id to its frames (or T - 1 flows) in time order. Returns
    {'warp_error' (rendered, mean over cameras), 'warp_error_truth', 'excess', 'ratio',
     'still' and 'moving': {'rendered', 'truth'} over those pixels (WARP_PROTOCOL 'regions'),
     'per_camera': {camera: {'rendered', 'truth', 'excess', 'ratio', 'pairs', 'valid_fraction', 'still',
     'moving'}}, 'num_cameras', 'protocol'}.
    """
    cams = list(rendered)
    if not cams:
        raise MetricError("flicker: no cameras")
    if set(truth) != set(cams) or set(flows) != set(cams):
        raise MetricError(f"flicker: cameras differ: rendered {sorted(map(str, rendered))}, "
                          f"truth {sorted(map(str, truth))}, flows {sorted(map(str, flows))}")
    per_camera: dict = {}
    for cam in cams:
        name = f"camera {cam}"
        if len(rendered[cam]) != len(truth[cam]):
            raise MetricError(f"{name}: {len(rendered[cam])} rendered frames but {len(truth[cam])} truth frames")
        for t, (r, g) in enumerate(zip(rendered[cam], truth[cam])):
            if np.shape(r) != np.shape(g):
                raise MetricError(f"view '{name} t{t}': rendered shape {np.shape(r)} != truth shape {np.shape(g)}")
        ren = warping_error(rendered[cam], flows[cam], quantize=True, name=name)
        gt = warping_error(truth[cam], flows[cam], quantize=False, name=name)
        per_camera[cam] = {"rendered": ren["warp_error"], "truth": gt["warp_error"],
                           "excess": ren["warp_error"] - gt["warp_error"],
                           "ratio": _ratio(ren["warp_error"], gt["warp_error"]),
                           "pairs": ren["pairs"], "valid_fraction": ren["valid_fraction"],
                           **{r: {"rendered": ren[f"warp_error_{r}"], "truth": gt[f"warp_error_{r}"]} for r in REGIONS}}
    mean_r = float(np.mean([v["rendered"] for v in per_camera.values()]))
    mean_t = float(np.mean([v["truth"] for v in per_camera.values()]))
    return {"warp_error": mean_r, "warp_error_truth": mean_t, "excess": mean_r - mean_t,
            "ratio": _ratio(mean_r, mean_t), **{r: _region_mean(per_camera, r) for r in REGIONS},
            "per_camera": per_camera, "num_cameras": len(per_camera), "protocol": dict(WARP_PROTOCOL)}


REGIONS = ("still", "moving")


def _region_mean(per_camera: dict, region: str) -> dict:
    """{'rendered', 'truth'}: the mean over the cameras that have pixels of the region (None if none has)."""
    out = {}
    for side in ("rendered", "truth"):
        values = [v[region][side] for v in per_camera.values() if v[region][side] is not None]
        out[side] = float(np.mean(values)) if values else None
    return out
