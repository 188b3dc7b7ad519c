"""harness.core.metrics against independent references: skimage, a direct 2-D SSIM, published LPIPS distances."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter
from scipy.signal import correlate2d
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim

from harness.core import metrics as M
from harness.core.errors import MetricError
from harness.core.metrics import lpips_model
from harness.core.paths import resolve_project_path

SHARED = resolve_project_path("../shared/data")
WEIGHTS = SHARED / "lpips_weights"
LPIPS_REF = SHARED / "lpips_reference"
LEGO_100 = SHARED / "nerf_synthetic/lego_100/test"
LEGO_200 = SHARED / "nerf_synthetic/lego_200/test"

needs_weights = pytest.mark.skipif(not WEIGHTS.is_dir(), reason=f"LPIPS backbone weights absent: {WEIGHTS}")
needs_lpips_ref = pytest.mark.skipif(not LPIPS_REF.is_dir(), reason=f"LPIPS reference images absent: {LPIPS_REF}")
needs_lego = pytest.mark.skipif(not (LEGO_100.is_dir() and LEGO_200.is_dir()),
                                reason=f"lego test views absent under {SHARED / 'nerf_synthetic'}")

# PerceptualSimilarity README (Zhang et al. 2018), LPIPS v0.1: d(ref, p0), d(ref, p1).
PUBLISHED_LPIPS = {"alex": (0.722, 0.138), "vgg": (0.569, 0.422)}


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float64) / 255.0
    return rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])  # on white, independently of harness


def stand_in_render(gt: np.ndarray, seed: int) -> np.ndarray:
    """A plausible 'render': blurred, noisy, saved as 8 bits."""
    rng = np.random.default_rng(seed)
    blurred = gaussian_filter(gt, sigma=(1.0, 1.0, 0.0)) + rng.normal(0.0, 0.02, gt.shape)
    return np.round(np.clip(blurred, 0.0, 1.0) * 255.0) / 255.0


def lego_pairs(folder: Path, indices) -> list[tuple[str, np.ndarray, np.ndarray]]:
    out = []
    for i in indices:
        gt = read_rgb(folder / f"r_{i}.png")
        out.append((f"r_{i}", stand_in_render(gt, i), gt))
    return out


def ssim_map(a: np.ndarray, b: np.ndarray, same: bool = False) -> np.ndarray:
    """mip-NeRF's SSIM map written out directly (explicit 2-D Gaussian window, scipy correlation per
    channel), H' x W' x C."""
    x = np.arange(11) - 5.0
    g = np.exp(-(x ** 2) / (2 * 1.5 ** 2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2

    def filt(z):
        return correlate2d(z, window, mode="same" if same else "valid", boundary="fill", fillvalue=0.0)

    maps = []
    for ch in range(a.shape[-1]):
        p, q = a[..., ch].astype(np.float64), b[..., ch].astype(np.float64)
        mp, mq = filt(p), filt(q)
        spp = np.maximum(filt(p * p) - mp ** 2, 0.0)
        sqq = np.maximum(filt(q * q) - mq ** 2, 0.0)
        spq = filt(p * q) - mp * mq
        spq = np.sign(spq) * np.minimum(np.sqrt(spp * sqq), np.abs(spq))
        maps.append((2 * mp * mq + c1) * (2 * spq + c2) / ((mp ** 2 + mq ** 2 + c1) * (spp + sqq + c2)))
    return np.stack(maps, axis=-1)


def reference_ssim(a: np.ndarray, b: np.ndarray, same: bool = False) -> float:
    """mip-NeRF's SSIM: the mean over channels of the mean of each channel's map."""
    smap = ssim_map(a, b, same)
    return float(np.mean([smap[..., ch].mean() for ch in range(smap.shape[-1])]))


def random_pair(shape=(40, 48, 3), seed=0):
    rng = np.random.default_rng(seed)
    gt = rng.random(shape)
    return np.clip(gt + rng.normal(0, 0.1, shape), 0, 1), gt


# ---------------------------------------------------------------- LPIPS


@needs_weights
@needs_lpips_ref
@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_reproduces_published_distances(net):
    ref, p0, p1 = (read_rgb(LPIPS_REF / f"ex_{n}.png") for n in ("ref", "p0", "p1"))
    d0 = M.lpips_distance(p0, ref, net=net, weights_dir="../shared/data/lpips_weights")
    d1 = M.lpips_distance(p1, ref, net=net, weights_dir="../shared/data/lpips_weights")
    assert abs(d0 - PUBLISHED_LPIPS[net][0]) < 1e-3
    assert abs(d1 - PUBLISHED_LPIPS[net][1]) < 1e-3
    # Batched scoring (one forward pass for all views) gives the same numbers.
    res = M.score_images([("p0", p0, ref), ("p1", p1, ref)], metrics=("lpips",), lpips_net=net,
                         weights_dir=WEIGHTS, quantize=False)
    assert res["per_view"]["p0"]["lpips"] == pytest.approx(d0, abs=1e-6)
    assert res["per_view"]["p1"]["lpips"] == pytest.approx(d1, abs=1e-6)
    assert res["protocol"]["lpips"]["net"] == net


def test_missing_weights_lists_every_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv(M.WEIGHTS_ENV, str(tmp_path / "from_env"))
    monkeypatch.setattr(lpips_model, "PROJECT_WEIGHTS_DIR", tmp_path / "project")
    monkeypatch.setenv("HARNESS_OFFLINE", "1")  # no download attempt (tests/test_lpips_fetch.py covers those)
    with pytest.raises(MetricError) as err:
        M.check_lpips_weights("vgg", weights_dir=tmp_path / "given")
    msg = str(err.value)
    assert "\n" not in msg and "vgg16_features_only.pth" in msg
    for tried in ("torch_home/hub/checkpoints/vgg16-397923af.pth", "given/vgg16_features_only.pth",
                  "from_env/vgg16_features_only.pth", "project/vgg16_features_only.pth"):
        assert str(tmp_path / tried) in msg
    with pytest.raises(MetricError, match="not found"):  # fails before any view is scored
        M.score_images(iter([("v", *random_pair())]), weights_dir=tmp_path / "given")
    with pytest.raises(MetricError, match="unknown LPIPS net"):
        M.check_lpips_weights("squeeze")


def test_weight_search_order(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(lpips_model, "PROJECT_WEIGHTS_DIR", tmp_path / "project")
    (tmp_path / "env").mkdir()
    (tmp_path / "env/alexnet_features_only.pth").write_bytes(b"x")
    monkeypatch.setenv(M.WEIGHTS_ENV, str(tmp_path / "env"))
    assert M.check_lpips_weights("alex") == tmp_path / "env/alexnet_features_only.pth"
    (tmp_path / "arg").mkdir()
    (tmp_path / "arg/alexnet_features_only.pth").write_bytes(b"x")
    assert M.check_lpips_weights("alex", tmp_path / "arg") == tmp_path / "arg/alexnet_features_only.pth"
    hub = tmp_path / "torch_home/hub/checkpoints/alexnet-owt-7be5be79.pth"
    hub.parent.mkdir(parents=True)
    hub.write_bytes(b"x")
    assert M.check_lpips_weights("alex", tmp_path / "arg") == hub


@needs_weights
def test_wrong_backbone_file_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    shutil.copy(WEIGHTS / "alexnet_features_only.pth", tmp_path / "vgg16_features_only.pth")
    with pytest.raises(MetricError, match="vgg16_features_only.pth"):
        M.get_lpips_model("vgg", weights_dir=tmp_path)


# ---------------------------------------------------------------- SSIM / PSNR


@needs_lego
def test_ssim_agrees_with_skimage_on_lego():
    for name, pred, gt in lego_pairs(LEGO_200, (0, 57, 133)):
        ours = M.ssim(pred, gt)
        ref = sk_ssim(pred, gt, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                      data_range=1.0, channel_axis=-1)
        assert ours < 0.98, f"{name}: stand-in render too close to its target to test anything"
        assert abs(ours - ref) < 1e-4, name


@needs_lego
def test_ssim_agrees_with_direct_implementation():
    for name, pred, gt in lego_pairs(LEGO_100, (3, 101)):
        assert abs(M.ssim(pred, gt) - reference_ssim(pred, gt)) < 1e-6, name
        assert abs(M.ssim(pred, gt, variant="svox2") - reference_ssim(pred, gt, same=True)) < 1e-6, name
    pred, gt = random_pair()
    assert abs(M.ssim(pred, gt) - reference_ssim(pred, gt)) < 1e-6


@needs_lego
def test_psnr_agrees_with_skimage():
    for name, pred, gt in lego_pairs(LEGO_100, (5, 77)):
        assert abs(M.psnr(pred, gt) - sk_psnr(gt, pred, data_range=1.0)) < 1e-5, name


def test_torch_ssim_matches_numpy_and_has_gradients():
    pred, gt = random_pair((3, 24, 20, 3), seed=1)
    expected = [M.ssim(p, g) for p, g in zip(pred, gt)]
    x = torch.tensor(pred, requires_grad=True)
    out = M.ssim(x, torch.tensor(gt))
    assert out.shape == (3,)
    np.testing.assert_allclose(out.detach().numpy(), expected, atol=1e-10)
    out32 = M.ssim(torch.tensor(pred[0], dtype=torch.float32), torch.tensor(gt[0], dtype=torch.float32))
    assert out32.dtype == torch.float32 and abs(float(out32) - expected[0]) < 1e-5
    (1 - out).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    small = torch.tensor(pred[0, :13, :12], requires_grad=True)
    for variant in M.SSIM_VARIANTS:
        assert torch.autograd.gradcheck(
            lambda t, variant=variant: M.ssim(t, torch.tensor(gt[0, :13, :12]), variant=variant), (small,))
    # Flat regions (zero variance) must not produce NaN gradients.
    flat = torch.full((16, 16, 3), 0.5, dtype=torch.float64, requires_grad=True)
    M.ssim(flat, torch.tensor(gt[0, :16, :16])).backward()
    assert torch.isfinite(flat.grad).all()


def test_svox2_variant_differs_from_valid():
    pred, gt = random_pair()
    assert M.ssim(pred, gt, variant="svox2") != pytest.approx(M.ssim(pred, gt), abs=1e-4)
    with pytest.raises(MetricError, match="variant"):
        M.ssim(pred, gt, variant="same")


def test_to_8bit():
    x = np.array([-0.1, 0.0, 0.3, 0.5 / 255, 0.7 / 255, 1.2], dtype=np.float32)
    q = M.to_8bit(x)
    assert q.dtype == np.float32
    np.testing.assert_array_equal(q * 255, [0, 0, 77, 1, 1, 255])  # float32 0.3 is just above 76.5 / 255
    np.testing.assert_array_equal(M.to_8bit(x.astype(np.float64)).astype(np.float32), q)
    np.testing.assert_array_equal(M.to_8bit(q), q)
    np.testing.assert_array_equal(M.to_8bit(torch.tensor(x)).numpy(), q)
    np.testing.assert_array_equal(M.to_uint8(x), np.round(q * 255).astype(np.uint8))


# ---------------------------------------------------------------- score_images: edge cases and validation


@needs_weights
def test_identical_images():
    pred, gt = random_pair((32, 32, 3))
    gt8 = M.to_8bit(gt)
    res = M.score_images([("same", gt8, gt8.astype(np.float64)), ("other", pred, gt)], weights_dir=WEIGHTS)
    same = res["per_view"]["same"]
    assert same["psnr"] == float("inf")
    assert same["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert same["lpips"] == pytest.approx(0.0, abs=1e-7)
    assert res["psnr_inf_views"] == 1
    assert res["psnr"] == pytest.approx(res["per_view"]["other"]["psnr"])
    assert M.score_images([("a", gt8, gt8)], metrics=("psnr",))["psnr"] == float("inf")


def test_shape_mismatch_names_both_shapes_and_view():
    with pytest.raises(MetricError, match=r"view 'r_7'.*\(20, 30, 3\).*\(20, 31, 3\)"):
        M.score_images([("r_7", np.zeros((20, 30, 3)), np.zeros((20, 31, 3)))], metrics=("psnr",))
    with pytest.raises(MetricError, match=r"\(4, 4\)"):
        M.psnr(np.zeros((4, 4)), np.zeros((4, 5)))


def test_range_and_nan_errors_name_the_view():
    pred, gt = random_pair()
    with pytest.raises(MetricError, match=r"view 'r_3': prediction values span .*divide by 255"):
        M.score_images([("r_3", pred * 255, gt)], metrics=("psnr",))
    with pytest.raises(MetricError, match=r"view 'r_4': target values span \[-0\.\d+"):
        M.score_images([("r_4", pred, gt - 0.5)], metrics=("psnr",))
    bad = pred.copy()
    bad[3, 4, 1] = np.nan
    with pytest.raises(MetricError, match=r"view 'r_9': prediction contains 1 NaN/Inf"):
        M.score_images([("ok", pred, gt), ("r_9", bad, gt)], metrics=("psnr",))
    # Round-off just outside [0, 1] is clipped, not rejected.
    res = M.score_images([("v", np.clip(pred, 0, 1) * (1 + 1e-4), gt)], metrics=("psnr",))
    assert np.isfinite(res["psnr"])


def test_grayscale_and_rgba_inputs():
    pred, gt = random_pair((24, 24, 1), seed=3)
    rgb = M.score_images([("v", np.repeat(pred, 3, -1), np.repeat(gt, 3, -1))], metrics=("psnr", "ssim"))
    for p, g in ((pred, gt), (pred[..., 0], gt[..., 0])):
        gray = M.score_images([("v", p, g)], metrics=("psnr", "ssim"))
        assert gray["per_view"] == rgb["per_view"]
    rng = np.random.default_rng(4)
    rgba = np.concatenate([rng.random((24, 24, 3)), rng.random((24, 24, 1))], axis=-1)
    target = rng.random((24, 24, 3))
    for bg in ((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)):
        flat = rgba[..., :3] * rgba[..., 3:] + np.asarray(bg) * (1 - rgba[..., 3:])
        got = M.score_images([("v", rgba, target)], metrics=("psnr", "ssim"), background=bg)
        want = M.score_images([("v", flat, target)], metrics=("psnr", "ssim"))
        assert got["per_view"]["v"] == pytest.approx(want["per_view"]["v"], abs=1e-6)
        assert got["protocol"]["background"] == list(bg)


def test_protocol_is_stated():
    pred, gt = random_pair()
    res = M.score_images([("v", pred, gt)], metrics=("psnr", "ssim"), ssim_variant="svox2")
    proto = res["protocol"]
    assert proto["ssim"]["variant"] == "svox2" and "zero-padded" in proto["ssim"]["filtering"]
    assert (proto["ssim"]["window"], proto["ssim"]["sigma"]) == (M.SSIM_WINDOW, M.SSIM_SIGMA)
    assert "inf" in proto["psnr"]["mean"] and "8-bit" in proto["quantization"]
    assert proto["resolution"] == [[40, 48]] and "lpips" not in proto
    with pytest.raises(MetricError, match="unknown metrics"):
        M.score_images([("v", pred, gt)], metrics=("psnr", "fid"))


def test_error_map():
    pred, gt = random_pair((10, 12, 3))
    emap = M.error_map(pred, gt)
    assert emap.dtype == np.uint8 and emap.shape == (10, 12, 3)
    zero = M.error_map(M.to_8bit(gt), M.to_8bit(gt))
    assert (zero == zero[0, 0]).all() and not (emap == zero[0, 0]).all(axis=-1).all()


# ---------------------------------------------------------------- evaluate_dirs


def _save(path: Path, img: np.ndarray) -> None:
    Image.fromarray(M.to_uint8(img)).save(path)


@needs_lego
def test_evaluate_dirs_pairs_by_name_and_matches_arrays(tmp_path):
    pred_dir, gt_dir = tmp_path / "renders", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    pairs = lego_pairs(LEGO_100, (2, 10, 11))
    for name, pred, _ in pairs:
        shutil.copy(LEGO_100 / f"{name}.png", gt_dir)  # RGBA targets, composited on white by evaluate_dirs
        _save(pred_dir / f"{name}.png", pred)
    metrics = ("psnr", "ssim", "lpips") if WEIGHTS.is_dir() else ("psnr", "ssim")
    got = M.evaluate_dirs(pred_dir, gt_dir, weights_dir=WEIGHTS, metrics=metrics)
    assert list(got["per_view"]) == ["r_2", "r_10", "r_11"]
    # Saved 8-bit files score exactly as the float renders did in memory (the trial's numbers).
    from harness.core.data.images import read_image

    mem = M.score_images([(n, p, read_image(LEGO_100 / f"{n}.png")) for n, p, _ in pairs],
                         weights_dir=WEIGHTS, metrics=metrics)
    assert got["per_view"] == mem["per_view"]

    (pred_dir / "r_10.png").unlink()
    _save(pred_dir / "extra.png", pairs[0][1])
    missing = r"1 target\(s\) .* no prediction: r_10; 1 prediction\(s\) .* no target: extra"
    with pytest.raises(MetricError, match=missing):
        M.evaluate_dirs(pred_dir, gt_dir, metrics=("psnr",))
    with pytest.raises(MetricError, match="does not exist"):
        M.evaluate_dirs(tmp_path / "nope", gt_dir, metrics=("psnr",))
