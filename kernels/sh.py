"""Real spherical-harmonics basis up to degree 3, in the sign/ordering convention of
PlenOctrees and Plenoxels (svox2): index l*l + l + m for m in [-l, l]. The constants are
the usual real SH normalisation factors, e.g. C0 = 1 / (2 sqrt(pi)) and C1 = sqrt(3 / (4 pi)),
so the basis is orthonormal on the unit sphere.
"""

from __future__ import annotations

import torch

from kernels._impl import resolve_impl

MAX_DEGREE = 3

C0 = 0.28209479177387814
C1 = 0.4886025119029199
C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
      0.5462742152960396)
C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
      -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def num_coeffs(degree: int) -> int:
    """Number of basis functions up to `degree` inclusive: (degree + 1)^2."""
    check_degree(degree)
    return (degree + 1) ** 2


def check_degree(degree: int) -> None:
    if not isinstance(degree, int) or isinstance(degree, bool) or not 0 <= degree <= MAX_DEGREE:
        raise ValueError(f"SH degree must be an integer in [0, {MAX_DEGREE}], got {degree!r}")


def sh_basis(dirs: torch.Tensor, degree: int, impl: str = "auto") -> torch.Tensor:
    """Real SH basis at unit directions `dirs` (M, 3) -> (M, (degree + 1)^2), same dtype."""
    resolve_impl(impl, "sh.sh_basis")
    check_degree(degree)
    if dirs.ndim != 2 or dirs.shape[1] != 3:
        raise ValueError(f"sh_basis: dirs must have shape (M, 3), got {tuple(dirs.shape)}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, C0)]
    if degree >= 1:
        out += [-C1 * y, C1 * z, -C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [C2[0] * x * y, C2[1] * y * z, C2[2] * (2.0 * zz - xx - yy), C2[3] * x * z,
                C2[4] * (xx - yy)]
    if degree >= 3:
        out += [C3[0] * y * (3.0 * xx - yy), C3[1] * x * y * z, C3[2] * y * (4.0 * zz - xx - yy),
                C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy), C3[4] * x * (4.0 * zz - xx - yy),
                C3[5] * z * (xx - yy), C3[6] * x * (xx - 3.0 * yy)]
    return torch.stack(out, dim=-1)
