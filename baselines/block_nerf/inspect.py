"""Per-sample view of a Block-NeRF block's rendering (the 'samples' capability, `harness inspect`).

The samples come from the call render() makes (`render_rays`, the field's forward: coarse intervals,
fine intervals resampled from the coarse weights, frustum densities and colours), under the conditioning
render() uses: `model.view` (the mean appearance code and exposure 1 unless set), or, with
view=(split, i), the one the scored render of that view uses (`view_condition`: the protocol's code,
e.g. fitted on the view's left half, and the view's exposure).
"""

from __future__ import annotations

import torch

from baselines.block_nerf import protocol as proto
from baselines.block_nerf.field import BlockField


def ray_samples(model, origins: torch.Tensor, directions: torch.Tensor, view=None) -> dict:
    """harness.core.method.SamplesProtocol.ray_samples for a BlockNeRF model ('coarse' and 'fine' passes)."""
    if view is None:
        code = model.view["code"] if model.view["code"] is not None else model.default_code()
        exposure, said = model.view["exposure"], "render()'s: the mean appearance code"
    else:
        code, exposure = model.view_condition(*view)
        said = _described(model, *view)
    model.field.eval()
    with torch.no_grad():
        out = model.render_rays(origins, directions, code, exposure)
    names = ("coarse", "fine") if model.field.n_fine else ("coarse",)  # without fine samples, fine is coarse
    _, acc = BlockField.depth_acc(out[names[-1]])
    norm = "" if code is None else f", |code| {float(code.norm()):.4g}"
    return {"passes": {n: _pass(out[n]) for n in names}, "final": names[-1],
            "rgb": out[names[-1]]["rgb"].float().clamp(0, 1).cpu(), "acc": acc.float().cpu(), "background": None,
            "conditioning": f"{said}{norm}; exposure {float(exposure):.4g}"}


def _pass(level: dict) -> dict:
    """One pass's intervals as packed samples (t: the interval's midpoint, as depth uses)."""
    edges, weights = level["edges"].float(), level["weights"].float()
    m, s = weights.shape
    delta = edges[:, 1:] - edges[:, :-1]
    sigma = level["density"].float()
    flat = {"t": (edges[:, 1:] + edges[:, :-1]) / 2, "delta": delta, "sigma": sigma,
            "alpha": 1 - torch.exp(-sigma * delta), "transmittance": level["trans"].float(), "weight": weights}
    out = {k: v.reshape(-1).cpu() for k, v in flat.items()}
    out["rgb"] = level["sample_rgb"].float().reshape(m * s, 3).cpu()
    out["ray"] = torch.arange(m).repeat_interleave(s)
    return out


def _described(model, split, i: int) -> str:
    """The scored render's appearance conditioning of view i, in words."""
    name = split.names[i]
    if model.protocol == "none":
        return "no appearance code (Appearance.mode 'none')"
    if model.protocol == "appearance_id":
        return f"the code learned for appearance_id {int(split.appearance_id[i])} (view {name})"
    fit, _ = proto.halves(split.cameras.width)
    return (f"an appearance code fitted with the networks frozen on the left half (columns {fit.start}-{fit.stop - 1}) "
            f"of view {name} ({model.fit['steps']} steps, lr {model.fit['lr']:g}; as its scored render, of which only "
            f"the right half is scored; a composition fits its own code with another seed)")
