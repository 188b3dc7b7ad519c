"""harness.core.metrics.temporal: flow warping, the warping error and the flicker protocol, on synthetic frames."""

from __future__ import annotations

import numpy as np
import pytest

from harness.core.errors import MetricError
from harness.core.metrics import flicker, warp, warping_error

H, W = 24, 32


def texture(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.2, 0.8, (H, W, 3))


def const_flow(du: float, dv: float) -> np.ndarray:
    return np.broadcast_to(np.array([du, dv], np.float32), (H, W, 2)).copy()


def translated_sequence(du: int, dv: int, steps: int = 4) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Frame t+1 shows frame t's content moved by (du, dv) px: frame_{t+1}[i + dv, j + du] = frame_t[i, j]."""
    big = np.random.default_rng(1).uniform(0.1, 0.9, (H + 2 * abs(dv) * steps, W + 2 * abs(du) * steps, 3))
    frames = [big[abs(dv) * steps - dv * t:][:H, abs(du) * steps - du * t:][:, :W] for t in range(steps)]
    return frames, [const_flow(du, dv)] * (steps - 1)


def test_integer_shift_is_exact_on_the_valid_region():
    img = texture()
    warped, valid = warp(img, const_flow(3, -2))
    # pixel (i, j) samples (i - 2, j + 3): rows 0-1 and the last 3 columns fall outside
    expected = np.zeros((H, W), bool)
    expected[2:, :W - 3] = True
    np.testing.assert_array_equal(valid, expected)
    np.testing.assert_array_equal(warped[2:, :W - 3], img[:H - 2, 3:])
    assert np.isnan(warped[~valid]).all()


def test_subpixel_shift_of_a_linear_ramp_interpolates_linearly():
    i, j = np.meshgrid(np.arange(H, dtype=np.float64), np.arange(W, dtype=np.float64), indexing="ij")
    ramp = np.stack([0.01 * j + 0.02 * i, 0.5 + 0.003 * j, 0.1 + 0.03 * i], -1)
    du, dv = 0.25, 0.625  # exact in float32, the flow's dtype
    warped, valid = warp(ramp, const_flow(du, dv))
    expected = np.stack([0.01 * (j + du) + 0.02 * (i + dv), 0.5 + 0.003 * (j + du), 0.1 + 0.03 * (i + dv)], -1)
    assert valid[:H - 1, :W - 1].all() and not valid[H - 1].any() and not valid[:, W - 1].any()
    np.testing.assert_allclose(warped[valid], expected[valid], rtol=0, atol=1e-12)


def test_nan_flow_and_samples_off_the_pixel_grid_are_invalid():
    flow = const_flow(0, 0)
    flow[5, 7] = np.nan
    flow[6, 8, 1] = np.nan  # one component is enough
    flow[0, 0] = (-0.01, 0.0)  # just left of the first pixel centre: would need padding
    flow[1, W - 1] = (0.0, 0.0)  # exactly on the last centre: valid, weight 1 on it
    warped, valid = warp(texture(), flow)
    assert not valid[5, 7] and not valid[6, 8] and not valid[0, 0]
    assert valid[1, W - 1] and valid.sum() == H * W - 3
    np.testing.assert_array_equal(warped[1, W - 1], texture()[1, W - 1])


def test_static_sequence_has_zero_warping_error():
    frames = [texture()] * 5
    out = warping_error(frames, [const_flow(0, 0)] * 4)
    assert out == {"warp_error": 0.0, "pairs": 4, "valid_fraction": 1.0, "warp_error_still": 0.0,
                   "warp_error_moving": None}


@pytest.mark.parametrize("du, dv", [(2, 1), (-1, 3)])
def test_translated_sequence_with_its_flow_has_zero_error(du, dv):
    frames, flows = translated_sequence(du, dv)
    out = warping_error(frames, flows)
    assert out["warp_error"] == 0.0 and out["pairs"] == 3
    assert out["valid_fraction"] == pytest.approx((H - abs(dv)) * (W - abs(du)) / (H * W))
    # the wrong flow (none) sees the motion
    assert warping_error(frames, [const_flow(0, 0)] * 3)["warp_error"] > 0.01


def test_independent_noise_per_frame_adds_two_sigma_squared():
    frames, flows = translated_sequence(1, 2, steps=6)
    sigma, rng = 0.02, np.random.default_rng(7)
    noisy = [f + rng.normal(0.0, sigma, f.shape) for f in frames]  # stays inside [0.1 - 5 sigma, 0.9 + 5 sigma]
    out = warping_error(noisy, flows, quantize=False)
    # the difference of two independent N(0, sigma^2) has variance 2 sigma^2; ~11k samples -> ~1.3 % std error
    assert out["warp_error"] == pytest.approx(2 * sigma**2, rel=0.06)


def test_flicker_reports_render_against_the_truth_floor():
    sigma, rng = 0.03, np.random.default_rng(3)
    truth, flows, rendered = {}, {}, {}
    for cam, (du, dv) in {0: (1, 0), "c7": (0, -2)}.items():
        frames, fl = translated_sequence(du, dv, steps=5)
        # a shading change the flow does not explain: the truth's own floor is nonzero
        truth[cam] = [np.clip(f + 0.01 * t, 0, 1) for t, f in enumerate(frames)]
        flows[cam] = fl
        rendered[cam] = [np.clip(f + rng.normal(0.0, sigma, f.shape), 0, 1) for f in truth[cam]]
    out = flicker(rendered, truth, flows)
    assert set(out["per_camera"]) == {0, "c7"} and out["num_cameras"] == 2
    for v in out["per_camera"].values():
        assert v["truth"] == pytest.approx(0.01**2, rel=1e-6)  # every valid pixel brightens by 0.01
        assert v["excess"] == pytest.approx(2 * sigma**2, rel=0.1)  # plus 8-bit rounding, ~1/255^2/6
        assert v["ratio"] == pytest.approx(v["rendered"] / v["truth"])
        assert v["pairs"] == 4 and 0.9 < v["valid_fraction"] < 1
    assert out["warp_error"] == pytest.approx(np.mean([v["rendered"] for v in out["per_camera"].values()]))
    assert out["excess"] == pytest.approx(out["warp_error"] - out["warp_error_truth"])
    proto = out["protocol"]
    assert {"warp", "interpolation", "pixels", "error", "quantization", "floor"} <= set(proto)
    assert "bilinear" in proto["interpolation"] and "8-bit" in proto["quantization"]


def test_a_render_equal_to_the_truth_has_no_excess():
    frames, flows = translated_sequence(1, 1)
    # a per-frame brightness change gives the truth a floor; frames on the 8-bit grid survive quantisation
    truth = [np.round((f + 0.02 * t) * 255) / 255 for t, f in enumerate(frames)]
    out = flicker({0: truth}, {0: truth}, {0: flows})
    assert out["warp_error_truth"] > 0 and out["excess"] == 0.0 and out["ratio"] == 1.0
    # a translated sequence is exactly consistent, also after quantisation: 0 / 0 counts as ratio 1
    out = flicker({0: frames}, {0: frames}, {0: flows})
    assert out["warp_error"] == out["warp_error_truth"] == 0.0 and out["ratio"] == 1.0


@pytest.mark.parametrize("call, message", [
    (lambda: warp(np.zeros((H, W)), const_flow(0, 0)), "expected float (H, W, C)"),
    (lambda: warp(texture(), np.zeros((H, W, 3))), "expected float (H, W, 2)"),
    (lambda: warp(texture(), np.zeros((H, W - 1, 2)), name="c0_t3"), "view 'c0_t3': flow shape (24, 31, 2)"),
    (lambda: warping_error([texture()] * 3, [const_flow(0, 0)]), "3 frames need 2 flows"),
    (lambda: warping_error([texture()], []), "at least 2 frames"),
    (lambda: warping_error([texture(), texture()[:-1]], [const_flow(0, 0)]), "view 'sequence t0': frame shape"),
    (lambda: warping_error([texture(), texture() * 300], [const_flow(0, 0)]), "view 'sequence t1': frame values"),
    (lambda: warping_error([texture()] * 2, [const_flow(np.nan, 0)]), "view 'sequence t0': no valid pixel"),
    (lambda: flicker({0: [texture()] * 2}, {1: [texture()] * 2}, {0: [const_flow(0, 0)]}), "cameras differ"),
    (lambda: flicker({0: [texture()] * 3}, {0: [texture()] * 2}, {0: [const_flow(0, 0)]}),
     "camera 0: 3 rendered frames but 2 truth"),
    (lambda: flicker({0: [texture()] * 2}, {0: [texture(), texture()[1:]]}, {0: [const_flow(0, 0)]}),
     "view 'camera 0 t1': rendered shape"),
    (lambda: flicker({}, {}, {}), "no cameras"),
])
def test_bad_input_gives_one_line_metric_errors(call, message):
    with pytest.raises(MetricError) as info:
        call()
    text = str(info.value)
    assert message in text and "\n" not in text, text


def test_still_and_moving_pixels_are_scored_apart():
    """Pixels with zero flow ('still') and the others ('moving') each get the mean error of their own pixels:
    a still half that flickers by noise and a moving half that follows its flow exactly."""
    sigma, rng = 0.02, np.random.default_rng(5)
    base = texture(2)
    frames = [np.clip(base + 0.0, 0, 1) for _ in range(4)]
    flows = [np.zeros((H, W, 2), np.float32) for _ in range(3)]
    # the right half moves up by one row per step along its flow; rows that leave or enter are invalid
    for t in range(1, 4):
        frames[t][:, W // 2:] = np.roll(frames[t - 1][:, W // 2:], -1, axis=0)
    for f in flows:
        f[:, W // 2:, 1] = -1.0
        f[0, W // 2:] = np.nan
    noisy = [fr.copy() for fr in frames]
    for fr in noisy:
        fr[:, :W // 2] += rng.normal(0.0, sigma, fr[:, :W // 2].shape)
    out = warping_error(noisy, flows, quantize=False)
    assert out["warp_error_moving"] == pytest.approx(0.0, abs=1e-12)
    assert out["warp_error_still"] == pytest.approx(2 * sigma**2, rel=0.1)
    both = flicker({"a": noisy}, {"a": frames}, {"a": flows})
    assert both["still"]["truth"] == pytest.approx(0.0, abs=1e-12)
    assert both["moving"]["truth"] == pytest.approx(0.0, abs=1e-12)
    assert both["still"]["rendered"] == both["per_camera"]["a"]["still"]["rendered"] > 0
    all_still = warping_error([frames[0], frames[0]], [np.zeros((H, W, 2), np.float32)], quantize=False)
    assert all_still["warp_error_moving"] is None and all_still["warp_error_still"] == 0.0
    assert "regions" in both["protocol"]
