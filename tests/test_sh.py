"""Real spherical-harmonics basis (kernels.sh): orthonormality, agreement with scipy, errors."""

import math

import numpy as np
import pytest
import torch

from kernels.sh import MAX_DEGREE, num_coeffs, sh_basis


def fibonacci_sphere(n: int) -> torch.Tensor:
    """n quasi-uniform unit vectors (a Fibonacci lattice: equal-area, low discrepancy)."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (1 + math.sqrt(5)) * i
    r = torch.sqrt(1 - z * z)
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=-1)


@pytest.mark.parametrize("degree", range(MAX_DEGREE + 1))
def test_basis_is_orthonormal_on_the_sphere(degree):
    dirs = fibonacci_sphere(20_000)
    y = sh_basis(dirs, degree)
    gram = y.T @ y * (4 * math.pi / dirs.shape[0])  # integral over the sphere of Y_i Y_j
    err = (gram - torch.eye(num_coeffs(degree), dtype=torch.float64)).abs().max().item()
    assert err < 1e-4, f"Gram matrix deviates from identity by {err}"


def _scipy_real_sh(degree: int, m: int, dirs: np.ndarray) -> np.ndarray:
    """Real SH from scipy's complex ones (Condon-Shortley phase removed by (-1)^m)."""
    from scipy.special import sph_harm_y

    theta = np.arccos(np.clip(dirs[:, 2], -1, 1))  # polar
    phi = np.arctan2(dirs[:, 1], dirs[:, 0])  # azimuth
    y = sph_harm_y(degree, abs(m), theta, phi)
    if m == 0:
        return y.real
    part = y.real if m > 0 else y.imag
    return math.sqrt(2) * (-1) ** m * part


def test_each_basis_function_matches_scipy_up_to_sign():
    pytest.importorskip("scipy")
    dirs = fibonacci_sphere(2_000)
    ours = sh_basis(dirs, MAX_DEGREE).numpy()
    for degree in range(MAX_DEGREE + 1):
        for m in range(-degree, degree + 1):
            ref = _scipy_real_sh(degree, m, dirs.numpy())
            col = ours[:, degree * degree + degree + m]
            sign = np.sign(np.dot(col, ref))
            np.testing.assert_allclose(col, sign * ref, atol=1e-10, err_msg=f"l={degree}, m={m}")


def test_svox2_sign_convention_of_degree_one():
    # svox2 / PlenOctrees: Y_1 = (-C1 y, C1 z, -C1 x)
    y = sh_basis(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), 1)
    c1 = math.sqrt(3 / (4 * math.pi))
    expected = (torch.tensor([[0, 0, 0, -c1], [0, -c1, 0, 0], [0, 0, c1, 0]])
                + 0.5 / math.sqrt(math.pi) * torch.tensor([[1.0, 0, 0, 0]] * 3))
    torch.testing.assert_close(y, expected)


def test_lower_degrees_are_prefixes_and_dtype_is_kept():
    dirs = fibonacci_sphere(50).float()
    full = sh_basis(dirs, 3)
    assert full.dtype == torch.float32 and full.shape == (50, 16)
    for d in range(3):
        torch.testing.assert_close(sh_basis(dirs, d), full[:, :num_coeffs(d)])


@pytest.mark.parametrize("degree", [-1, 4, 5, 2.0, True])
def test_bad_degree_is_a_clear_error(degree):
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        sh_basis(torch.zeros(1, 3), degree)


def test_impl_switch():
    dirs = fibonacci_sphere(4).float()
    torch.testing.assert_close(sh_basis(dirs, 2, impl="torch"), sh_basis(dirs, 2, impl="auto"))
    for impl in ("triton", "cuda"):  # SH evaluation is fused into kernels.sample.sample_grid_sh
        with pytest.raises(ValueError, match="not provided for this op"):
            sh_basis(dirs, 2, impl=impl)
    with pytest.raises(ValueError, match="unknown impl"):
        sh_basis(dirs, 2, impl="numpy")
