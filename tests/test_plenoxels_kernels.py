"""Plenoxels through the fast kernels (Plenoxels.kernels): a training step with impl='triton' (the
Triton interpreter on this CPU, real kernels on CUDA tensors when there is a GPU) matches the
PyTorch reference on the same device."""

import pytest
import torch

from baselines.plenoxels import Plenoxels, TVLoss
from kernels import _impl
from tests.test_kernels_fixtures import DEVICE  # first: sets TRITON_INTERPRET before triton is imported
from tests.test_plenoxels import random_batch, synthetic_scene

pytestmark = pytest.mark.skipif(not _impl.triton_available(), reason="triton does not import")


def _model(kernels):
    return Plenoxels(synthetic_scene(), 0, resolution=16, upsample_steps=(), prune_steps=(), batch_size=64,
                     kernels=kernels, tv=TVLoss(weight_density=1e-3, weight_sh=1e-3), device=DEVICE)


def _capture_grads(model):
    """Record the gradients each step hands to the optimiser."""
    seen = []
    update = model._update

    def spy(step, grads, d_rows, s_rows):
        seen.append([None if g is None else g.clone() for g in grads] + [d_rows.clone(), s_rows.clone()])
        update(step, grads, d_rows, s_rows)
    model._update = spy
    return seen


def test_triton_kernels_train_like_the_reference():
    ref, fast = _model("torch"), _model("triton")
    grads_ref, grads_fast = _capture_grads(ref), _capture_grads(fast)
    for step in range(3):
        a = ref.train_step(step, random_batch(step, 64))
        b = fast.train_step(step, random_batch(step, 64))
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-7), k
    # gradients of every step (RMSProp divides by their running RMS, which amplifies float
    # round-off of near-zero gradients, so parameters are compared through their renders)
    for gr, gf in zip(grads_ref, grads_fast):
        for x, y in zip(gr, gf):
            if x is None:
                assert y is None
            else:
                torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-6)
    batch = random_batch(9, 64)
    torch.testing.assert_close(fast.render(batch["origins"], batch["directions"])["rgb"],
                               ref.render(batch["origins"], batch["directions"])["rgb"], rtol=0, atol=2e-3)


def test_unknown_kernel_implementation_is_a_clear_error():
    with pytest.raises(ValueError, match="kernels must be one of"):
        _model("fast")
