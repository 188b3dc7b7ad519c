"""Cost of each metric on the 25 full-resolution (800x800) lego test views, each against a blurred copy.

Run with `make bench` (or `pytest tests/bench/test_bench_metrics.py`); `make test` skips this folder.
One round per case: LPIPS-VGG alone takes minutes here, and the spread between rounds is not the point.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from harness.core import metrics as M
from harness.core.data.images import read_image
from harness.core.metrics.lpips_model import lpips_batch
from harness.core.paths import resolve_project_path

pytestmark = pytest.mark.bench

VIEWS = resolve_project_path("../shared/data/nerf_synthetic/lego_800_test25/test")
WEIGHTS = resolve_project_path("../shared/data/lpips_weights")
GROUP = "metrics-lego800x25"


@pytest.fixture(scope="module")
def views():
    if not VIEWS.is_dir():
        pytest.skip(f"800x800 lego views absent: {VIEWS}")
    torch.set_num_threads(2)  # explicit: oversubscribed threads distort timings on this 2-core machine
    out = []
    for path in sorted(VIEWS.glob("r_*.png")):
        gt = M.prepare(read_image(path), path.stem, "target")
        out.append((path.stem, M.to_8bit(gaussian_filter(gt, sigma=(1.0, 1.0, 0.0))), gt))
    assert len(out) == 25
    return out


def _run(benchmark, fn, views, name):
    benchmark.group = GROUP
    benchmark.extra_info.update(views=len(views), metric=name)
    benchmark.pedantic(fn, rounds=1, iterations=1, warmup_rounds=0)
    benchmark.extra_info["seconds_per_view"] = benchmark.stats.stats.mean / len(views)


def test_bench_psnr(benchmark, views):
    _run(benchmark, lambda: [M.psnr(p, g) for _, p, g in views], views, "psnr")


@pytest.mark.parametrize("variant", M.SSIM_VARIANTS)
def test_bench_ssim(benchmark, views, variant):
    _run(benchmark, lambda: [M.ssim(p, g, variant=variant) for _, p, g in views], views, f"ssim-{variant}")


@pytest.mark.parametrize("net", M.LPIPS_NETS)
def test_bench_lpips(benchmark, views, net):
    if not WEIGHTS.is_dir():
        pytest.skip(f"LPIPS weights absent: {WEIGHTS}")
    model, _ = M.get_lpips_model(net, WEIGHTS)  # built outside the timing
    _run(benchmark, lambda: [lpips_batch(model, [p], [g]) for _, p, g in views], views, f"lpips-{net}")


def test_bench_score_images(benchmark, views):
    """The whole protocol as a trial runs it: validation, quantisation, PSNR, SSIM, LPIPS-VGG."""
    if not WEIGHTS.is_dir():
        pytest.skip(f"LPIPS weights absent: {WEIGHTS}")
    M.get_lpips_model("vgg", WEIGHTS)
    result = {}
    _run(benchmark, lambda: result.update(M.score_images(iter(views), weights_dir=WEIGHTS)), views, "score_images")
    benchmark.extra_info.update({k: result[k] for k in ("psnr", "ssim", "lpips")})
    ssim_svox2 = [M.ssim(p, g, variant="svox2") for _, p, g in views]
    diffs = np.abs(np.asarray(ssim_svox2) - [v["ssim"] for v in result["per_view"].values()])
    benchmark.extra_info["ssim_svox2_minus_mipnerf_mean_abs"] = float(diffs.mean())
