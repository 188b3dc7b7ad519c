"""The project's one evaluation module: PSNR, SSIM, LPIPS and how a set of views is scored.

Training-time validation and final evaluation both call these functions; baselines never compute
metrics themselves. The protocol (docs/evaluation.md) is returned with every score set and stored
in each trial record. The code lives in this package's modules (image, lpips_model, scoring); this is the public API.
"""

from harness.core.metrics.image import (
    RANGE_TOLERANCE,
    SSIM_K1,
    SSIM_K2,
    SSIM_SIGMA,
    SSIM_VARIANTS,
    SSIM_WINDOW,
    error_map,
    prepare,
    prepare_mask,
    prepare_pair,
    psnr,
    ssim,
    to_8bit,
    to_uint8,
)
from harness.core.metrics.lpips_model import (
    LPIPS_NETS,
    WEIGHTS_ENV,
    check_lpips_weights,
    get_lpips_model,
    lpips_distance,
)
from harness.core.metrics.scoring import MASK_RULES, METRICS, evaluate_dirs, score_images
from harness.core.metrics.temporal import WARP_PROTOCOL, flicker, warp, warping_error

__all__ = [
    "MASK_RULES", "METRICS", "LPIPS_NETS", "RANGE_TOLERANCE", "SSIM_K1", "SSIM_K2", "SSIM_SIGMA", "SSIM_VARIANTS",
    "SSIM_WINDOW", "WEIGHTS_ENV", "check_lpips_weights", "error_map", "evaluate_dirs", "get_lpips_model",
    "lpips_distance", "prepare", "prepare_mask", "prepare_pair", "psnr", "score_images", "ssim", "to_8bit", "to_uint8",
    "WARP_PROTOCOL", "flicker", "warp", "warping_error",
]
