"""Scoring a set of views (arrays or two folders of images) under the one recorded protocol."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from harness.core.errors import HarnessError, MetricError
from harness.core.metrics.image import (
    RANGE_TOLERANCE,
    SSIM_K1,
    SSIM_K2,
    SSIM_SIGMA,
    SSIM_VARIANTS,
    SSIM_WINDOW,
    prepare_mask,
    prepare_pair,
    psnr,
    ssim,
    to_8bit,
)
from harness.core.metrics.lpips_model import get_lpips_model, lpips_batch

log = logging.getLogger(__name__)

METRICS = ("psnr", "ssim", "lpips")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# LPIPS runs on batches of equally sized views up to this many pixels: small views batch up,
# 800x800 ones go one at a time (VGG activations of one 800x800 pair take ~1 GB).
LPIPS_BATCH_PIXELS = 512 * 512

PSNR_MEAN_RULE = ("mean over views with finite PSNR; views equal to their target after quantisation "
                  "(PSNR = inf) are left out and counted in psnr_inf_views; inf if every view is")
# How a view with a mask (the dataset's static-pixel mask, e.g. transient objects masked out) is scored.
MASK_RULES = {
    "pixels": ("a view's mask (H x W, True = static) selects the pixels scored; per_view kept_fraction is "
               "their share; views without a mask are scored whole"),
    "replacement": ("the prediction's masked-out pixels are replaced by the target's before SSIM and LPIPS, "
                    "so windows and receptive fields that reach them see no transient content"),
    "psnr": "-10 * log10(MSE over the kept pixels and their channels)",
    "ssim": ("SSIM map averaged over the kept pixels and channels; the 'valid' map uses the mask cropped by "
             "half the window on each side (the map pixel's window centre), the zero-padded map the whole mask"),
    "lpips": ("spatial LPIPS map (each layer's distance map upsampled bilinearly to the image size and summed, "
              "as lpips' spatial=True) averaged over the kept pixels"),
}


def _protocol(metrics: Sequence[str], ssim_variant: str, lpips_info: dict | None, quantize: bool,
              background: Sequence[float], resolutions: set[tuple[int, int]], masked_views: int) -> dict:
    proto: dict = {
        "quantization": ("prediction scored as saved 8-bit: round(clip(x, 0, 1) * 255) / 255; target as given"
                         if quantize else "none (float prediction)"),
        "background": [float(c) for c in background],
        "resolution": sorted([h, w] for h, w in resolutions),
        "range_tolerance": RANGE_TOLERANCE,
    }
    if "psnr" in metrics:
        proto["psnr"] = {"formula": "-10 * log10(MSE over pixels and channels), data range 1",
                         "mean": PSNR_MEAN_RULE}
    if "ssim" in metrics:
        proto["ssim"] = {"variant": ssim_variant, "formula": "mip-NeRF compute_ssim (Barron et al. 2021)",
                         "window": SSIM_WINDOW, "sigma": SSIM_SIGMA, "k1": SSIM_K1, "k2": SSIM_K2,
                         "filtering": ("separable Gaussian, valid" if ssim_variant == "mipnerf"
                                       else "separable Gaussian, zero-padded same"),
                         "moments_clipped": True, "reduction": "mean over pixels and channels"}
    if lpips_info is not None:
        proto["lpips"] = dict(lpips_info)
    if masked_views:  # only then, so unmasked score sets keep the protocol they always had
        proto["mask"] = {"masked_views": masked_views,
                         **{k: v for k, v in MASK_RULES.items() if k in metrics or k not in METRICS}}
    return proto


def _unpack(item) -> tuple[str, object, object, object]:
    """(name, pred, gt, mask or None) from a 3- or 4-tuple."""
    try:
        name, pred, gt, *rest = item
    except (TypeError, ValueError):
        rest = [None, None]
    if len(rest) > 1:
        size = f" of length {len(item)}" if hasattr(item, "__len__") else ""
        raise MetricError(f"score_images: expected (name, pred, gt) or (name, pred, gt, mask) tuples, "
                          f"got {type(item).__name__}{size}")
    return str(name), pred, gt, (rest[0] if rest else None)


def score_images(pairs: Iterable[tuple], metrics: Sequence[str] = METRICS,
                 lpips_net: str = "vgg", weights_dir: str | Path | None = None, device: str = "cpu",
                 background: Sequence[float] = (1.0, 1.0, 1.0), quantize: bool = True,
                 ssim_variant: str = "mipnerf") -> dict:
    """Score `(name, pred, gt)` views (float H x W x 3 in [0, 1]; grayscale and RGBA accepted).

    A view may be `(name, pred, gt, mask)`: mask None scores it whole; a bool H x W array (True = the
    pixel counts, e.g. static content) scores the kept pixels only, by MASK_RULES, and per_view
    records its `kept_fraction`.
    Views are consumed one at a time (only a pending LPIPS batch is held), so 800x800 test sets fit.
    Returns {'psnr', 'ssim', 'lpips' (means of the requested metrics), 'per_view': {name: {...}},
    'num_views', 'psnr_inf_views', 'protocol': {...}} ('protocol' has 'mask' when a view had one).
    """
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise MetricError(f"unknown metrics {unknown or metrics}; expected a subset of {METRICS}")
    if ssim_variant not in SSIM_VARIANTS:
        raise MetricError(f"unknown SSIM variant {ssim_variant!r}; expected one of {SSIM_VARIANTS}")
    if len(background) != 3:
        raise MetricError(f"background must be 3 values in [0, 1], got {background!r}")
    # Built (and its weights found) before the first view, so a missing file fails fast.
    model, lpips_info = get_lpips_model(lpips_net, weights_dir, device) if "lpips" in metrics else (None, None)

    per_view: dict[str, dict[str, float]] = {}
    resolutions: set[tuple[int, int]] = set()
    pending: list[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]] = []
    masked_views = 0

    def flush(lpips_model: torch.nn.Module) -> None:
        preds, gts, masks = [v[1] for v in pending], [v[2] for v in pending], [v[3] for v in pending]
        for view, d in zip(pending, lpips_batch(lpips_model, preds, gts, masks)):
            per_view[view[0]]["lpips"] = d
        pending.clear()

    for item in pairs:
        name, pred, gt, mask = _unpack(item)
        if name in per_view:
            raise MetricError(f"view {name!r} appears twice")
        p, g = prepare_pair(name, pred, gt, background)
        keep = None if mask is None else prepare_mask(mask, name, p.shape)
        if quantize:
            p = to_8bit(p)
        if keep is not None:
            p = np.where(keep[..., None], p, g)  # after quantising: only kept pixels are the render's
            masked_views += 1
        resolutions.add(p.shape[:2])
        scores: dict[str, float] = {}
        if "psnr" in metrics:
            scores["psnr"] = psnr(p, g, mask=keep)
        if "ssim" in metrics:
            scores["ssim"] = ssim(p, g, variant=ssim_variant, name=name, mask=keep)
        if keep is not None:
            scores["kept_fraction"] = float(keep.mean())
        per_view[name] = scores
        if model is not None:
            if pending and (pending[0][1].shape != p.shape
                            or (len(pending) + 1) * p.shape[0] * p.shape[1] > LPIPS_BATCH_PIXELS):
                flush(model)
            pending.append((name, p, g, keep))
        log.debug("scored %s: %s", name, scores)
    if model is not None and pending:
        flush(model)
    if not per_view:
        raise MetricError("score_images: no views to score")

    result: dict = {}
    for m in metrics:
        values = [v[m] for v in per_view.values()]
        if m == "psnr":
            finite = [v for v in values if math.isfinite(v)]
            result[m] = float(np.mean(finite)) if finite else math.inf
            result["psnr_inf_views"] = len(values) - len(finite)
        else:
            result[m] = float(np.mean(values))
    result["num_views"] = len(per_view)
    result["per_view"] = per_view
    result["protocol"] = _protocol(metrics, ssim_variant, lpips_info, quantize, background, resolutions,
                                   masked_views)
    return result


def _natural_key(stem: str) -> list:
    # r_2 before r_10, as the test split is numbered.
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", stem)]


def _image_files(folder: Path, role: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise MetricError(f"{role} folder {folder} does not exist")
    files: dict[str, Path] = {}
    for path in folder.iterdir():
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
            if path.stem in files:
                raise MetricError(f"{role} folder {folder}: two images named {path.stem!r} "
                                  f"({files[path.stem].name}, {path.name})")
            files[path.stem] = path
    return files


def _listing(names: list[str], limit: int = 20) -> str:
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _read(path: Path) -> np.ndarray:
    from harness.core.data.images import read_image  # the project's one image reader

    try:
        return read_image(path)
    except HarnessError as exc:
        raise MetricError(str(exc)) from None


def evaluate_dirs(pred_dir: str | Path, gt_dir: str | Path, lpips_net: str = "vgg",
                  background: Sequence[float] = (1.0, 1.0, 1.0), weights_dir: str | Path | None = None,
                  metrics: Sequence[str] = METRICS, device: str = "cpu", ssim_variant: str = "mipnerf") -> dict:
    """Score every image in `pred_dir` against the image of the same stem in `gt_dir` (not recursive).

    Both sides must hold the same set of names; RGBA files are composited on `background`.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    preds, gts = _image_files(pred_dir, "prediction"), _image_files(gt_dir, "target")
    if not preds:
        raise MetricError(f"prediction folder {pred_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    no_gt = sorted(set(preds) - set(gts), key=_natural_key)
    no_pred = sorted(set(gts) - set(preds), key=_natural_key)
    if no_gt or no_pred:
        parts = []
        if no_pred:
            parts.append(f"{len(no_pred)} target(s) in {gt_dir} have no prediction: {_listing(no_pred)}")
        if no_gt:
            parts.append(f"{len(no_gt)} prediction(s) in {pred_dir} have no target: {_listing(no_gt)}")
        raise MetricError("; ".join(parts))

    def pairs() -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        for stem in sorted(preds, key=_natural_key):
            yield stem, _read(preds[stem]), _read(gts[stem])

    return score_images(pairs(), metrics=metrics, lpips_net=lpips_net, weights_dir=weights_dir,
                        device=device, background=background, ssim_variant=ssim_variant)
