"""Total variation over a (sparse) grid or a random subset of voxels: the reference (gradcheck on a
sparse subset) and the Triton kernel against it (value and gradient), including repeated voxels
(colliding atomics), absent voxels, flat regions (the l2 norm's clamp) and a trained grid."""

from __future__ import annotations

import pytest
import torch

from kernels import _impl
from kernels.tv import total_variation, tv_from_rows, tv_neighbours
from tests.test_kernels_fixtures import DEVICE, ball_grid, lego_grid

needs_triton = pytest.mark.skipif(not _impl.triton_available(), reason="triton does not import")
RES = (5, 6, 7)


def sparse_links(res, keep=0.7, seed=0):
    n = res[0] * res[1] * res[2]
    present = torch.rand(n, generator=torch.Generator().manual_seed(seed)) < keep
    links = torch.full((n,), -1, dtype=torch.int32)
    links[present] = torch.arange(int(present.sum()), dtype=torch.int32)
    return links, int(present.sum())


def _value_and_grad(impl, values, res, links, voxels, norm):
    v = values.detach().to(DEVICE).requires_grad_()
    dev = lambda x: x.to(DEVICE) if x is not None else None  # noqa: E731
    out = total_variation(v, res, dev(links), dev(voxels), norm=norm, impl=impl)
    grad, = torch.autograd.grad(out * 2.5, v)
    return out.detach().cpu(), grad.cpu()


def test_reference_gradcheck_float64_sparse_subset():
    links, n = sparse_links((3, 4, 3))
    values = torch.randn(n, 2, dtype=torch.float64, requires_grad=True)
    voxels = torch.randint(0, 36, (20,), generator=torch.Generator().manual_seed(1))
    for norm in ("l2", "squared"):
        def f(x, norm=norm):
            return total_variation(x, (3, 4, 3), links, voxels, norm=norm, impl="torch")

        assert torch.autograd.gradcheck(f, (values,))


@needs_triton
@pytest.mark.parametrize("norm", ["l2", "squared"])
@pytest.mark.parametrize("channels", [1, 27])
@pytest.mark.parametrize("layout", ["dense-all", "dense-subset", "sparse-all", "sparse-subset"])
def test_triton_matches_reference(norm, channels, layout, small_blocks):
    sparse = layout.startswith("sparse")
    links, n = sparse_links(RES) if sparse else (None, RES[0] * RES[1] * RES[2])
    g = torch.Generator().manual_seed(channels)
    values = torch.randn(n, channels, generator=g)
    # a subset drawn with replacement: repeated centres and shared neighbours collide in atomics
    voxels = torch.randint(0, 210, (300,), generator=g) if layout.endswith("subset") else None
    ref = _value_and_grad("torch", values, RES, links, voxels, norm)
    got = _value_and_grad("triton", values, RES, links, voxels, norm)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-5, atol=1e-7)


@needs_triton
def test_triton_flat_regions_and_absent_centres():
    # constant grid: TV 0, and l2's gradient is 0 (not NaN) where differences vanish
    flat = torch.full((210, 3), 1.5)
    for norm in ("l2", "squared"):
        value, grad = _value_and_grad("triton", flat, RES, None, None, norm)
        assert value.item() == 0 and torch.equal(grad, torch.zeros_like(grad))
    # only absent voxels drawn: TV 0 with a zero gradient, as the reference
    links, n = sparse_links(RES)
    absent = torch.nonzero(links < 0)[:, 0][:5]
    values = torch.randn(n, 2)
    for impl in ("torch", "triton"):
        value, grad = _value_and_grad(impl, values, RES, links, absent, "l2")
        assert value.item() == 0 and torch.equal(grad, torch.zeros_like(grad))
    # tiny differences below eps: the l2 clamp's gradient is 0 in both
    tiny = torch.zeros(210, 1)
    tiny[17] = 1e-7
    ref = _value_and_grad("torch", tiny, RES, None, None, "l2")
    got = _value_and_grad("triton", tiny, RES, None, None, "l2")
    torch.testing.assert_close(got[1], ref[1], rtol=1e-5, atol=1e-9)


@needs_triton
def test_triton_on_structured_and_trained_grids():
    for grid in (ball_grid(), lego_grid()[0]):
        res = grid["resolution"]
        voxels = torch.nonzero(grid["links"] >= 0)[:, 0]
        subset = voxels[torch.randint(0, voxels.shape[0], (500,), generator=torch.Generator().manual_seed(3))]
        for values in (grid["density"], grid["sh"]):
            for vox in (None, subset):
                ref = _value_and_grad("torch", values, res, grid["links"], vox, "l2")
                got = _value_and_grad("triton", values, res, grid["links"], vox, "l2")
                torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(got[1], ref[1], rtol=1e-4, atol=1e-7)


@needs_triton
def test_tv_from_rows_triton_with_precomputed_rows():
    """The entry point the Plenoxels loss uses: rows and neighbour rows drawn once, remapped."""
    links, n = sparse_links(RES, seed=4)
    values = torch.randn(n, 4)
    voxels = torch.nonzero(links >= 0)[:, 0][::3]
    row, nbs = tv_neighbours(RES, links, voxels)
    outs = []
    for impl in ("torch", "triton"):
        v = values.clone().requires_grad_()
        out = tv_from_rows(v, row, nbs, norm="squared", impl=impl)
        outs.append((out.detach(), torch.autograd.grad(out, v)[0]))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outs[1][1], outs[0][1], rtol=1e-5, atol=1e-7)
