"""Device placement, checked without a GPU.

On a GPU a baseline fails when one of its tensors is made on the CPU by a call that names no
device. Under `with torch.device("meta")` such a tensor lands on the meta device instead, and
mixing it with the model's CPU tensors raises, so a CPU machine catches what would break on a
GPU. Tensors the methods keep on the CPU on purpose (draws from a CPU generator, renders handed
back to the runner) must name their device.
"""

from __future__ import annotations

import contextlib

import gin
import numpy as np
import pytest
import torch

from baselines.block_nerf.compose import compose_view, match_appearance
from baselines.block_nerf.partition import BlockPartition
from baselines.plenoxels import Plenoxels, TVLoss
from baselines.plenoxels.losses import Smoothness, Sparsity
from harness.core.data.rays import RaySampler
from harness.core.method import pick_device
from tests.test_block_nerf import small
from tests.test_block_nerf_toy import toy_scene
from tests.test_plenoxels import random_batch, synthetic_scene


@pytest.fixture(autouse=True)
def _clean():
    gin.clear_config()
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
    gin.clear_config()


def _on_meta(fn, *args):
    with torch.device("meta"):
        return fn(*args)


def _is_cpu_result(out: dict) -> None:
    for key in ("rgb", "depth", "acc"):
        assert out[key].device.type == "cpu", key
        assert torch.isfinite(out[key]).all(), key


def test_meta_default_device_catches_a_tensor_made_without_a_device():
    """The check itself: a model tensor mixed with one made without a device raises."""
    model_tensor = torch.ones(3)
    with pytest.raises(RuntimeError), torch.device("meta"):
        model_tensor + torch.zeros(3)


def test_plenoxels_training_and_render_name_their_devices():
    """Steps through every schedule event (occupancy refresh, pruning, upsampling) and every
    loss term with random draws, then a render, all with meta as the default device."""
    m = Plenoxels(synthetic_scene(), 0, resolution=32, upsample_steps=(4,), prune_steps=(3, 6),
                  occupancy_every=2, batch_size=256, kernels="torch", device="cpu",
                  tv=TVLoss(weight_density=1e-4, weight_sh=1e-4), sparsity=Sparsity(weight=1e-4),
                  smoothness=Smoothness(weight_density=1e-4, weight_sh=1e-4))
    for step in range(8):
        losses = _on_meta(m.train_step, step, random_batch(step, 256))
        assert np.isfinite(losses["loss"])
    batch = random_batch(99, 300)
    _is_cpu_result(_on_meta(m.render, batch["origins"], batch["directions"]))


def test_plenoxels_in_ndc_names_its_devices():
    """Forward-facing scenes (LLFF) are marched in NDC: a step and a render of rays down -z."""
    scene = synthetic_scene()
    scene.ndc = True
    scene.bbox = np.array([[-1, -1, -1], [1, 1, 1]], dtype=np.float32)
    scene.extras["ndc"] = {"focal": 100.0, "width": 200, "height": 100, "near": 1.0}
    m = Plenoxels(scene, 0, resolution=16, upsample_steps=(), prune_steps=(), batch_size=64, kernels="torch",
                  device="cpu", tv=TVLoss(weight_density=1e-4, weight_sh=1e-4))
    g = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.cat([torch.rand(64, 2, generator=g) * 0.6 - 0.3,
                                                 -torch.ones(64, 1)], 1), dim=1)
    batch = {"origins": torch.zeros(64, 3), "directions": d, "rgb": torch.rand(64, 3, generator=g),
             "image_index": torch.zeros(64, dtype=torch.long)}
    for step in range(2):
        assert np.isfinite(_on_meta(m.train_step, step, batch)["loss"])
    _is_cpu_result(_on_meta(m.render, batch["origins"], batch["directions"]))


@pytest.mark.parametrize("appearance", ["appearance_id", "image"])
def test_block_nerf_training_and_render_name_their_devices(appearance):
    """One block with appearance codes, exposure, visibility and pose refinement on; per-image
    codes render a test view through the left-half protocol (a code fitted on the left half)."""
    scene = toy_scene()
    m = small(scene, pose_noise={"rotation_deg": 1.0, "translation_frac": 0.01}, device="cpu",
              appearance={"mode": appearance})
    train = m.trial_scene.split("train")
    sampler = RaySampler(train.images, train.cameras, 0)
    for step in range(3):
        losses = _on_meta(m.train_step, step, sampler.sample(step, m.batch_size))
        assert np.isfinite(losses["loss"])
    test = m.trial_scene.split("test")
    img = _on_meta(m.render_view, test, 0)
    assert img.shape[-1] == 3 and np.isfinite(img).all()
    vis = _on_meta(m.visibility_error, test)
    assert np.isfinite(vis["mae"])


def test_block_nerf_mixed_precision_path_trains(monkeypatch):
    """The CUDA-only float16 path (autocast + one GradScaler over the per-component optimizers),
    with the CPU's float16 autocast standing in for CUDA's: losses fall and stay finite, and the
    scaler's state survives a state_dict round trip."""
    import baselines.block_nerf.method as block_method

    monkeypatch.setattr(block_method, "autocast", lambda device, enabled: torch.autocast("cpu", dtype=torch.float16)
                        if enabled else contextlib.nullcontext())
    m = small(toy_scene(), device="cpu", pose_noise={"rotation_deg": 1.0, "translation_frac": 0.01})
    m.mixed, m.scaler = True, torch.amp.GradScaler("cpu")
    train = m.trial_scene.split("train")
    sampler = RaySampler(train.images, train.cameras, 0)
    losses = [m.train_step(step, sampler.sample(step, m.batch_size))["mse"] for step in range(12)]
    assert np.isfinite(losses).all() and np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    state = m.state_dict()
    assert state["scaler"]["scale"] > 0
    m.load_state_dict(state)
    assert m.render_view(m.trial_scene.split("test"), 0).dtype == np.float32


def test_block_nerf_composition_names_its_devices():
    """Blending two blocks at a view in their overlap: block selection by visibility in the
    region, appearance matching, inverse-distance weights."""
    scene = toy_scene()
    models = {b: small(scene, block=b, partition=BlockPartition(n_blocks=2), device="cpu") for b in (0, 1)}
    test = scene.split("test")
    mid = int(np.argmin(np.abs(test.cameras.c2w[:, 0, 3] - 6.0)))
    opts = {"power": 4.0, "select_radius": 1.0, "visibility_threshold": 0.1, "max_blocks": 0,
            "visibility_stride": 4, "visibility_region": True, "root_block": 0, "match_rays": 64,
            "match_steps": 2, "match_lr": 0.05}
    codes = {b: {0: m.codes.detach()[0]} for b, m in models.items()}
    matched, log_rows = _on_meta(match_appearance, models, {b: c[0] for b, c in codes.items()}, test.cameras, opts)
    assert len(log_rows) == 1
    img, info = _on_meta(compose_view, models, test, mid, opts, codes)
    assert np.isfinite(img).all() and sorted(info["blocks"]) == [0, 1]


def test_auto_device_is_the_cpu_without_a_gpu_and_a_missing_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        assert pick_device("auto").type == "cuda"
        return
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        pick_device("cuda")
    with pytest.raises(ValueError, match="device must be one of"):
        pick_device("gpu0")


def test_the_record_names_the_device_the_method_computes_on():
    from harness.run.trial import device_name

    assert device_name("cpu").startswith("CPU (")
    expected = "CUDA" if torch.cuda.is_available() else "CPU ("
    assert expected in device_name()
