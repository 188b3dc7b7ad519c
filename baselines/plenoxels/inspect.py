"""Per-sample view of Plenoxels' rendering (the 'samples' capability, `harness inspect`).

The samples are the ones `Plenoxels.render` composites: the same chunks (`_chunks`: occupancy-skipped
fixed steps, density > 0, early termination at `stop_transmittance`), colours and `_composite` call.
"""

from __future__ import annotations

import torch

from kernels.render import transmittance


@torch.no_grad()
def ray_samples(model, origins: torch.Tensor, directions: torch.Tensor) -> dict:
    """harness.core.method.SamplesProtocol.ray_samples for a Plenoxels model (one pass, 'render')."""
    delta = model._step_world()
    background = model.background()
    parts, rgbs, accs, offset = [], [], [], 0
    for d, n, ray_index, t, rows, weight, sigma in model._chunks(origins, directions, model.render_stop):
        rgb = model._colour(model.grid.sh, rows, weight, d, ray_index)
        out = model._composite(sigma, rgb, t, ray_index, n, background)
        sigma_delta = sigma * delta
        parts.append({"ray": ray_index.long() + offset, "t": t, "delta": torch.full_like(t, delta),
                      "sigma": sigma, "alpha": 1.0 - torch.exp(-sigma_delta),
                      "transmittance": transmittance(sigma_delta, ray_index, n), "weight": out["weights"],
                      "rgb": rgb})
        rgbs.append(out["rgb"])
        accs.append(out["acc"])
        offset += n
    samples = {k: torch.cat([p[k] for p in parts]).cpu() for k in parts[0]} if parts else _empty()
    return {"passes": {"render": samples}, "final": "render",
            "rgb": torch.cat(rgbs).cpu() if rgbs else torch.zeros(0, 3),
            "acc": torch.cat(accs).cpu() if accs else torch.zeros(0),
            "background": background.cpu(), "conditioning": "none (Plenoxels renders every view alike)"}


def _empty() -> dict:
    zero = torch.zeros(0)
    return {"ray": torch.zeros(0, dtype=torch.long), "t": zero, "delta": zero, "sigma": zero, "alpha": zero,
            "transmittance": zero, "weight": zero, "rgb": torch.zeros(0, 3)}
