"""Per-image metrics (PSNR, SSIM), 8-bit quantisation, input validation and error maps.

One implementation of each formula: numpy inputs are scored in float64 by the same torch code
that tensors (with autograd, e.g. the Plenoxels SSIM loss) go through.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import overload

import numpy as np
import torch
import torch.nn.functional as F

from harness.core.errors import MetricError

# mip-NeRF's SSIM constants (Barron et al. 2021, internal/math.py compute_ssim), the NeRF-paper standard.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
# 'mipnerf': valid filtering (the reference); 'svox2': zero-padded 'same' filtering, as svox2's port does.
SSIM_VARIANTS = ("mipnerf", "svox2")
# Values within half an 8-bit step of [0, 1] quantise to 0 or 255 anyway, so they are clipped, not rejected.
RANGE_TOLERANCE = 0.5 / 255

Image = np.ndarray | torch.Tensor


@overload
def to_8bit(img: np.ndarray) -> np.ndarray: ...
@overload
def to_8bit(img: torch.Tensor) -> torch.Tensor: ...
def to_8bit(img: Image) -> Image:
    """round(clip(img, 0, 1) * 255) / 255, same type and float dtype: the values a saved PNG holds.

    The product is formed in float64, where x * 255 is exact for float32 x, so float32 and float64
    copies of an image quantise alike (in float32, 0.3 * 255 rounds to 76.5 and then to 76).
    """
    if isinstance(img, torch.Tensor):
        dtype = img.dtype if img.is_floating_point() else torch.float32
        return (torch.round(img.double().clamp(0.0, 1.0) * 255.0) / 255.0).to(dtype)
    arr = np.asarray(img)
    np_dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float32
    return (np.round(np.clip(arr.astype(np.float64), 0.0, 1.0) * 255.0) / 255.0).astype(np_dtype, copy=False)


def to_uint8(img: Image) -> np.ndarray:
    """The uint8 array to save as PNG; to_uint8(img) / 255 == to_8bit(img) exactly (in float32)."""
    if isinstance(img, torch.Tensor):
        img = img.detach().cpu().numpy()
    return np.round(np.clip(np.asarray(img, dtype=np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def _check_same_shape(pred, gt, name: str | None) -> None:
    if tuple(pred.shape) != tuple(gt.shape):
        raise MetricError(f"{_where(name)}prediction shape {tuple(pred.shape)} != target shape {tuple(gt.shape)}")


def _where(name: str | None) -> str:
    return f"view {name!r}: " if name else ""


def _bool_mask(mask, name: str | None):
    """`mask` as bool (same type: array or tensor); 0/1 numbers are accepted, anything else is an error."""
    if isinstance(mask, torch.Tensor):
        if mask.dtype == torch.bool:
            return mask
        if not mask.is_complex() and bool(((mask == 0) | (mask == 1)).all()):
            return mask != 0
        raise MetricError(f"{_where(name)}mask has dtype {mask.dtype} with values other than 0 and 1; "
                          "expected bool (True = the pixel counts)")
    arr = np.asarray(mask)
    if arr.dtype == np.bool_:
        return arr
    numeric = np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    if numeric and bool(np.isin(arr, (0, 1)).all()):
        return arr != 0
    values = " with values other than 0 and 1" if numeric else ""
    raise MetricError(f"{_where(name)}mask has dtype {arr.dtype}{values}; expected bool (True = the pixel counts)")


def prepare_mask(mask, name: str | None, shape: tuple[int, ...]) -> np.ndarray:
    """A validated H x W bool array (True = the pixel is scored) for an image of `shape` (H x W [x C])."""
    m = _bool_mask(mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else mask, name)
    _check_mask_shape(m.shape, tuple(shape[:2]), name)
    _check_kept(m, name)
    return m


def _check_mask_shape(got: tuple[int, ...], want: tuple[int, ...], name: str | None) -> None:
    if tuple(got) != tuple(want):
        raise MetricError(f"{_where(name)}mask shape {tuple(got)} does not match the image's height x width "
                          f"{tuple(want)}")


def _mask_like(mask: Image, shape: torch.Size, batched: bool, name: str | None) -> torch.Tensor:
    """A bool tensor of `shape` ([N,] H, W) from an H x W mask (shared by a batch) or an N x H x W one."""
    m = torch.as_tensor(_bool_mask(mask, name))
    if batched and m.ndim == 2:
        _check_mask_shape(m.shape, shape[1:], name)
        m = m.expand(shape)
    _check_mask_shape(m.shape, shape, name)
    _check_kept(m, name)
    return m


def _check_kept(m: Image, name: str | None, where: str = "") -> None:
    """Every image of a (batch of) mask(s) must keep a pixel, or its mean would be 0 / 0."""
    kept = m.reshape(-1, *m.shape[-2:]).any(-1).any(-1) if m.ndim > 2 else m.any()
    if not bool(kept.all()):
        raise MetricError(f"{_where(name)}mask keeps no pixel{where or ' (all False)'}")


@overload
def psnr(pred: np.ndarray, gt: np.ndarray, name: str | None = None, mask: Image | None = None) -> float: ...
@overload
def psnr(pred: torch.Tensor, gt: Image, name: str | None = None, mask: Image | None = None) -> torch.Tensor: ...
@overload
def psnr(pred: Image, gt: torch.Tensor, name: str | None = None, mask: Image | None = None) -> torch.Tensor: ...
def psnr(pred: Image, gt: Image, name: str | None = None, mask: Image | None = None) -> float | torch.Tensor:
    """-10*log10(MSE) over all pixels and channels (data range 1); identical images give inf.

    numpy in -> float (float64 arithmetic); tensors in -> tensor, per image for N x H x W x C input.
    `mask` (bool H x W, or N x H x W for batched tensors; True = counts): the MSE over the kept
    pixels and every channel of them.
    """
    _check_same_shape(pred, gt, name)
    if isinstance(pred, torch.Tensor) or isinstance(gt, torch.Tensor):
        pred, gt = torch.as_tensor(pred), torch.as_tensor(gt)
        dims = tuple(range(1, pred.ndim)) if pred.ndim == 4 else tuple(range(pred.ndim))
        sq = (pred - gt) ** 2
        if mask is None:
            return -10.0 * torch.log10(sq.mean(dim=dims))
        channels = pred.ndim in (3, 4)  # H x W x C or N x H x W x C; a 2-D tensor is one H x W channel
        w = _mask_like(mask, sq.shape[:-1] if channels else sq.shape, pred.ndim == 4, name).to(sq.device, sq.dtype)
        w = (w[..., None] if channels else w).expand_as(sq)
        return -10.0 * torch.log10((sq * w).sum(dim=dims) / w.sum(dim=dims))
    sq_np = (np.asarray(pred, np.float64) - np.asarray(gt, np.float64)) ** 2
    if mask is not None:
        sq_np = sq_np[prepare_mask(mask, name, sq_np.shape)]  # (kept, C): the mean runs over both
    mse = float(np.mean(sq_np))
    return math.inf if mse == 0.0 else -10.0 * math.log10(mse)


def _gaussian_taps() -> list[float]:
    # Odd window, so mip-NeRF's centring shift is 0: taps at -5..5, exp(-x^2 / 2 sigma^2), sum 1.
    x = (np.arange(SSIM_WINDOW, dtype=np.float64) - SSIM_WINDOW // 2) / SSIM_SIGMA
    w = np.exp(-0.5 * x * x)
    return (w / w.sum()).tolist()


def _filter_rows(z: torch.Tensor, taps: list[float]) -> torch.Tensor:
    """'valid' correlation along dim -2 as a sum of shifted row blocks.

    Contiguous row slices keep this memory-bound: on the CPU it is ~3x faster than a grouped
    float64 conv2d (0.46 s vs 1.45 s for 15 maps of 800x800 on 2 cores) and exactly as accurate.
    """
    n = z.shape[-2] - len(taps) + 1
    out = z[..., 0:n, :] * taps[0]
    for i in range(1, len(taps)):
        out = out.add_(z[..., i:i + n, :], alpha=taps[i])
    return out


def _ssim_nchw(x: torch.Tensor, y: torch.Tensor, variant: str, max_val: float,
               keep: torch.Tensor | None = None) -> torch.Tensor:
    """SSIM per image of (N, C, H, W) tensors: mean of the SSIM map over C, H, W.

    `keep` (bool, N or 1 x H' x W', the map's own size): the mean over those map pixels instead.
    """
    n, c = x.shape[:2]
    taps = _gaussian_taps()
    # All five moment images are filtered together.
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    if variant == "svox2":
        half = SSIM_WINDOW // 2
        stack = F.pad(stack, (half, half, half, half))  # zeros: what svox2's padded conv2d sees
    # Separable: filter rows, transpose so columns become rows, filter again. The SSIM map stays
    # transposed; only its mean is used.
    stack = _filter_rows(_filter_rows(stack, taps).transpose(-1, -2).contiguous(), taps)
    mu_x, mu_y, e_xx, e_yy, e_xy = stack.split(c, dim=1)
    # mip-NeRF clips the moments to values a real covariance matrix can have (round-off makes them invalid).
    var_x = (e_xx - mu_x * mu_x).clamp_min(0.0)
    var_y = (e_yy - mu_y * mu_y).clamp_min(0.0)
    cov = e_xy - mu_x * mu_y
    prod = var_x * var_y
    positive = prod > 0
    # sqrt through a where, so flat regions (prod == 0) give a zero gradient instead of NaN.
    bound = torch.where(positive, torch.sqrt(torch.where(positive, prod, torch.ones_like(prod))), 0.0)
    cov = torch.sign(cov) * torch.minimum(bound, cov.abs())
    c1, c2 = (SSIM_K1 * max_val) ** 2, (SSIM_K2 * max_val) ** 2
    num = (2.0 * mu_x * mu_y + c1) * (2.0 * cov + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    smap = num / den
    if keep is None:
        return smap.reshape(n, -1).mean(dim=1)
    # The map is transposed (N, C, W', H'), so the mask is too; every channel of a kept pixel counts.
    w = keep.transpose(-1, -2)[:, None].to(smap.dtype).expand_as(smap)
    return (smap * w).sum(dim=(1, 2, 3)) / w.sum(dim=(1, 2, 3))


@overload
def ssim(pred: np.ndarray, gt: np.ndarray, variant: str = "mipnerf", max_val: float = 1.0,
         name: str | None = None, mask: Image | None = None) -> float: ...
@overload
def ssim(pred: torch.Tensor, gt: Image, variant: str = "mipnerf", max_val: float = 1.0,
         name: str | None = None, mask: Image | None = None) -> torch.Tensor: ...
@overload
def ssim(pred: Image, gt: torch.Tensor, variant: str = "mipnerf", max_val: float = 1.0,
         name: str | None = None, mask: Image | None = None) -> torch.Tensor: ...
def ssim(pred: Image, gt: Image, variant: str = "mipnerf", max_val: float = 1.0,
         name: str | None = None, mask: Image | None = None) -> float | torch.Tensor:
    """SSIM with mip-NeRF's formula (Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, per channel, mean).

    Inputs H x W, H x W x C or (tensors only) N x H x W x C. numpy in -> float computed in float64;
    tensors in -> tensor in their dtype, differentiable (scalar, or (N,) for batched input).
    variant='mipnerf' filters 'valid' (the reference); 'svox2' zero-pads to 'same' size like svox2's port.
    `mask` (bool H x W, or N x H x W for batched tensors; True = counts): the SSIM map averaged over
    the kept pixels only. The 'valid' map is 10 pixels smaller than the image (pixel (i, j) is the
    window centred on image pixel (i + 5, j + 5)), so the mask is cropped by 5 on each side alike;
    the 'same' map uses it as is. Windows still reach masked-out pixels within 5 px of a kept one.
    """
    if variant not in SSIM_VARIANTS:
        raise MetricError(f"unknown SSIM variant {variant!r}; expected one of {SSIM_VARIANTS}")
    _check_same_shape(pred, gt, name)
    is_torch = isinstance(pred, torch.Tensor) or isinstance(gt, torch.Tensor)
    if is_torch:
        x, y = torch.as_tensor(pred), torch.as_tensor(gt)
        if not x.is_floating_point():
            x, y = x.float(), y.float()
    else:
        x = torch.from_numpy(np.asarray(pred, dtype=np.float64))
        y = torch.from_numpy(np.asarray(gt, dtype=np.float64))
    batched = x.ndim == 4
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    if x.ndim not in (3, 4) or (batched and not is_torch):
        raise MetricError(f"ssim: expected H x W [x C] images (N x H x W x C tensors), got shape {tuple(x.shape)}")
    if x.ndim == 3:
        x, y = x[None], y[None]
    if variant == "mipnerf" and min(x.shape[1:3]) < SSIM_WINDOW:
        raise MetricError(f"ssim: image of {x.shape[2]}x{x.shape[1]} is smaller than the {SSIM_WINDOW}-pixel window")
    y = y.to(dtype=x.dtype, device=x.device)
    keep = None
    if mask is not None:
        keep = _mask_like(mask, x.shape[:3], True, name).to(x.device)
        if variant == "mipnerf":
            half = SSIM_WINDOW // 2
            keep = keep[:, half:keep.shape[1] - half, half:keep.shape[2] - half]
            _check_kept(keep, name, f" at least {half} px inside the border, where the 'valid' SSIM map is defined")
    out = _ssim_nchw(x.permute(0, 3, 1, 2), y.permute(0, 3, 1, 2), variant, max_val, keep)
    if not is_torch:
        return float(out[0])
    return out if batched else out[0]


def prepare(img, name: str, role: str = "prediction",
            background: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """A float32 H x W x 3 image in [0, 1] from what a caller passed, or a one-line MetricError.

    Grayscale (H, W) / (H, W, 1) is expanded to 3 channels; RGBA is composited on `background`
    with the data loader's own compositing. float32 (the protocol's image type) makes an 8-bit
    image read from a PNG and the same image quantised by to_8bit bit-identical.
    """
    if isinstance(img, torch.Tensor):
        img = img.detach().cpu().numpy()
    arr = np.asarray(img)
    shape = arr.shape
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise MetricError(f"view {name!r}: {role} has dtype {arr.dtype}, expected floats in [0, 1]")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise MetricError(f"view {name!r}: {role} has shape {shape}, expected H x W, H x W x 1, 3 or 4")
    finite = np.isfinite(arr)
    if not finite.all():
        raise MetricError(f"view {name!r}: {role} contains {arr.size - int(finite.sum())} NaN/Inf values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -RANGE_TOLERANCE or hi > 1.0 + RANGE_TOLERANCE:
        hint = " (8-bit values? divide by 255)" if hi > 1.5 and lo >= 0 else ""
        raise MetricError(f"view {name!r}: {role} values span [{lo:.4g}, {hi:.4g}], expected [0, 1]{hint}")
    arr = np.clip(arr.astype(np.float32), 0.0, 1.0)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.shape[-1] == 4:
        from harness.core.data.images import composite  # one compositing rule for loader and metrics

        arr = composite(arr, np.asarray(background, dtype=np.float32))
    return arr


def prepare_pair(name: str, pred, gt, background: Sequence[float] = (1.0, 1.0, 1.0)
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Validated H x W x 3 prediction and target; a mismatch names both shapes as given."""
    p = prepare(pred, name, "prediction", background)
    g = prepare(gt, name, "target", background)
    if p.shape != g.shape:
        raise MetricError(f"view {name!r}: prediction shape {np.shape(pred)} does not match "
                          f"target shape {np.shape(gt)}")
    return p, g


def error_map(pred, gt, vmax: float = 0.2, background: Sequence[float] = (1.0, 1.0, 1.0),
              name: str = "error_map") -> np.ndarray:
    """uint8 H x W x 3 heat map (matplotlib 'inferno') of the per-pixel absolute error, channel mean.

    The scale is fixed (0 -> black, >= vmax -> yellow) so maps of different trials are comparable.
    """
    import matplotlib  # lazily: only renders of error maps need it

    p, g = prepare_pair(name, pred, gt, background)
    err = np.clip(np.abs(to_8bit(p) - g).mean(axis=-1) / vmax, 0.0, 1.0)
    rgba = matplotlib.colormaps["inferno"](err)
    return np.round(rgba[..., :3] * 255.0).astype(np.uint8)
