"""Masked scoring (issue 28: transient objects masked out): only the kept (static) pixels count."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harness.core import metrics as M
from harness.core.errors import MetricError
from harness.core.paths import resolve_project_path
from tests.test_metrics import ssim_map

WEIGHTS = resolve_project_path("../shared/data") / "lpips_weights"
needs_weights = pytest.mark.skipif(not WEIGHTS.is_dir(), reason=f"LPIPS backbone weights absent: {WEIGHTS}")
NO_LPIPS = ("psnr", "ssim")


def pair(shape=(64, 96, 3), seed=0, noise=0.1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gt = rng.random(shape)
    return np.clip(gt + rng.normal(0, noise, shape), 0, 1), gt


def blob_mask(shape=(64, 96), seed=1) -> np.ndarray:
    """A static-pixel mask: a few rectangles masked out (as a transient object would be), the rest kept."""
    rng = np.random.default_rng(seed)
    keep = np.ones(shape, bool)
    for _ in range(3):
        r, c = rng.integers(0, shape[0] - 12), rng.integers(0, shape[1] - 12)
        keep[r:r + rng.integers(5, 20), c:c + rng.integers(5, 30)] = False
    return keep


# ---------------------------------------------------------------- an all-True mask is no mask


@needs_weights
@pytest.mark.parametrize("variant", M.SSIM_VARIANTS)
def test_all_true_mask_scores_as_unmasked(variant):
    pred, gt = pair()
    whole = M.score_images([("v", pred, gt)], weights_dir=WEIGHTS, ssim_variant=variant)
    masked = M.score_images([("v", pred, gt, np.ones(gt.shape[:2], bool))], weights_dir=WEIGHTS,
                            ssim_variant=variant)
    a, b = whole["per_view"]["v"], masked["per_view"]["v"]
    assert b["psnr"] == a["psnr"]
    assert b["ssim"] == pytest.approx(a["ssim"], abs=1e-12)
    # 64 x 96: every VGG layer's size divides the image's, so the spatial map's mean is the LPIPS.
    assert b["lpips"] == pytest.approx(a["lpips"], abs=1e-6)
    assert b["kept_fraction"] == 1.0 and "kept_fraction" not in a
    assert "mask" not in whole["protocol"] and masked["protocol"]["mask"]["masked_views"] == 1
    assert {k: v for k, v in masked["protocol"].items() if k != "mask"} == whole["protocol"]


def test_all_true_mask_at_odd_size_and_none_mask():
    pred, gt = pair((37, 53, 3))
    whole = M.score_images([("v", pred, gt)], metrics=NO_LPIPS)
    ones = M.score_images([("v", pred, gt, np.ones((37, 53), bool))], metrics=NO_LPIPS)
    assert ones["per_view"]["v"]["psnr"] == whole["per_view"]["v"]["psnr"]
    assert ones["per_view"]["v"]["ssim"] == pytest.approx(whole["per_view"]["v"]["ssim"], abs=1e-12)
    # A None mask is a 3-tuple: same numbers, no kept_fraction, the protocol of old.
    none = M.score_images([("v", pred, gt, None)], metrics=NO_LPIPS)
    assert none == whole


# ---------------------------------------------------------------- the rules, computed independently


@pytest.mark.parametrize("quantize", [False, True])
def test_masked_psnr_is_mse_over_kept_pixels(quantize):
    pred, gt = (a.astype(np.float32) for a in pair(seed=3))  # the scorer's image type: no rounding on entry
    keep = blob_mask()
    res = M.score_images([("v", pred, gt, keep)], metrics=("psnr",), quantize=quantize)
    p = np.round(pred.astype(np.float64) * 255) / 255 if quantize else pred.astype(np.float64)
    p = p.astype(np.float32)
    sq_sum = sum(float(np.sum((p[r, c].astype(np.float64) - gt[r, c]) ** 2)) for r, c in zip(*np.nonzero(keep)))
    want = -10 * math.log10(sq_sum / (keep.sum() * 3))
    assert res["per_view"]["v"]["psnr"] == pytest.approx(want, rel=1e-12)
    assert res["per_view"]["v"]["kept_fraction"] == pytest.approx(keep.mean())
    # The torch path (validation, losses) agrees, batched with one mask per image.
    t = M.psnr(torch.from_numpy(np.stack([pred, pred]).astype(np.float64)),
               torch.from_numpy(np.stack([gt, gt]).astype(np.float64)),
               mask=torch.from_numpy(np.stack([keep, np.ones_like(keep)])))
    assert float(t[0]) == pytest.approx(M.psnr(pred, gt, mask=keep), rel=1e-12)
    assert float(t[1]) == pytest.approx(M.psnr(pred, gt), rel=1e-12)


@pytest.mark.parametrize("variant", M.SSIM_VARIANTS)
def test_masked_ssim_is_the_map_mean_over_kept_pixels(variant):
    pred, gt = pair(seed=4)
    keep = blob_mask(seed=5)
    same = variant == "svox2"
    # The 'valid' map is 5 px smaller on each side: map pixel (i, j) is the window at (i + 5, j + 5).
    crop = keep if same else keep[5:-5, 5:-5]
    smap = ssim_map(pred, gt, same)
    assert M.ssim(pred, gt, variant=variant, mask=keep) == pytest.approx(smap[crop].mean(), abs=1e-9)
    # score_images first gives the masked-out pixels the target's values (no transient content in any window).
    replaced = np.where(keep[..., None], pred, gt)
    got = M.score_images([("v", pred, gt, keep)], metrics=("ssim",), quantize=False, ssim_variant=variant)
    assert got["per_view"]["v"]["ssim"] == pytest.approx(ssim_map(replaced, gt, same)[crop].mean(), abs=1e-9)
    # Torch (float64) agrees, with gradients.
    x = torch.from_numpy(pred).requires_grad_(True)
    t = M.ssim(x, torch.from_numpy(gt), variant=variant, mask=torch.from_numpy(keep))
    t.backward()
    assert t.item() == pytest.approx(smap[crop].mean(), abs=1e-9) and torch.isfinite(x.grad).all()


@needs_weights
def test_masked_lpips_is_the_packages_spatial_map_over_kept_pixels():
    pred, gt = pair(seed=6)
    keep = blob_mask(seed=7)
    got = M.score_images([("v", pred, gt, keep)], metrics=("lpips",), quantize=False, weights_dir=WEIGHTS)
    model, _ = M.get_lpips_model("vgg", WEIGHTS)
    x, y = (torch.from_numpy(a.astype(np.float32)).permute(2, 0, 1)[None] * 2 - 1
            for a in (np.where(keep[..., None], pred, gt), gt))
    model.spatial = True  # the package's own spatial map, as reference
    try:
        with torch.no_grad():
            ref = model(x, y)[0, 0].numpy()
    finally:
        model.spatial = False
    assert got["per_view"]["v"]["lpips"] == pytest.approx(float(ref[keep].astype(np.float64).mean()), abs=1e-6)


@needs_weights
def test_wrong_only_where_masked_out_scores_perfect():
    rng = np.random.default_rng(8)
    gt = M.to_8bit(rng.random((64, 96, 3)))  # on the 8-bit grid: the quantised prediction equals it
    keep = blob_mask(seed=9)
    pred = np.where(keep[..., None], gt, 1.0 - gt)  # a 'transient' only where the mask drops pixels
    res = M.score_images([("v", pred, gt, keep)], weights_dir=WEIGHTS)
    view = res["per_view"]["v"]
    assert view["psnr"] == math.inf and res["psnr_inf_views"] == 1
    assert view["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert view["lpips"] == pytest.approx(0.0, abs=1e-7)
    whole = M.score_images([("v", pred, gt)], weights_dir=WEIGHTS)["per_view"]["v"]
    assert whole["psnr"] < 20 and whole["ssim"] < 0.9 and whole["lpips"] > 0.05


@needs_weights
def test_mixed_batch_keeps_unmasked_views_identical():
    (pa, ga), (pb, gb) = pair(seed=10), pair(seed=11)
    plain = M.score_images([("a", pa, ga), ("b", pb, gb)], weights_dir=WEIGHTS)
    mixed = M.score_images([("a", pa, ga), ("b", pb, gb, blob_mask())], weights_dir=WEIGHTS)
    assert mixed["per_view"]["a"] == plain["per_view"]["a"]
    assert "kept_fraction" in mixed["per_view"]["b"] and mixed["protocol"]["mask"]["masked_views"] == 1
    assert set(mixed["protocol"]["mask"]) == {"masked_views", "pixels", "replacement", "psnr", "ssim", "lpips"}


# ---------------------------------------------------------------- errors


def test_mask_errors_name_the_view():
    pred, gt = pair((20, 30, 3))

    def score(mask, variant="mipnerf"):
        return M.score_images([("r_7", pred, gt, mask)], metrics=NO_LPIPS, ssim_variant=variant)

    border = np.zeros((20, 30), bool)
    border[:5] = True  # only pixels the 'valid' SSIM map has no window centred on
    cases = [(np.ones((20, 31), bool), r"mask shape \(20, 31\) does not match .* \(20, 30\)"),
             (np.ones((20, 30, 1), bool), r"mask shape \(20, 30, 1\) does not match .* \(20, 30\)"),
             (np.zeros((20, 30), bool), r"mask keeps no pixel \(all False\)"),
             (np.full((20, 30), 0.5, np.float32), r"mask has dtype float32 with values other than 0 and 1"),
             (np.full((20, 30), np.nan), r"mask has dtype float64 with values other than 0 and 1"),
             (np.full((20, 30), "x"), r"mask has dtype <U1; expected bool"),
             (border, r"mask keeps no pixel at least 5 px inside the border, where the 'valid' SSIM map")]
    for mask, message in cases:
        with pytest.raises(MetricError, match=r"^view 'r_7': " + message) as exc:
            score(mask)
        assert "\n" not in str(exc.value)
    assert math.isfinite(score(border, variant="svox2")["per_view"]["r_7"]["ssim"])
    with pytest.raises(MetricError, match=r"expected \(name, pred, gt\) or \(name, pred, gt, mask\).*length 5"):
        M.score_images([("v", pred, gt, None, None)], metrics=NO_LPIPS)


def test_zero_one_masks_are_accepted():
    pred, gt = pair((20, 30, 3))
    keep = np.ones((20, 30), bool)
    keep[6:12, 4:20] = False
    want = M.score_images([("v", pred, gt, keep)], metrics=NO_LPIPS)
    for mask in (keep.astype(np.uint8), keep.astype(np.float64), torch.from_numpy(keep), torch.from_numpy(keep).int()):
        assert M.score_images([("v", pred, gt, mask)], metrics=NO_LPIPS) == want
