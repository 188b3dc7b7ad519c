"""DenseGrid: density and RGB on a dense voxel grid over the scene's box, no view dependence.

Each ray is sampled at `samples` evenly spaced depths between the scene's near and far (jittered
during training by a generator seeded from (seed, step), so a step is a pure function of the state),
the grid is trilinearly interpolated (torch's grid_sample), density goes through a softplus and
colour through a sigmoid, and the samples are alpha-composited over the scene's background by
kernels.render.composite. Adam on all voxels; the loss is the mean squared error of the pixels.
"""

from __future__ import annotations

import copy

import gin
import torch
import torch.nn.functional as F

from harness.core.method import pick_device
from kernels.render import composite


@gin.configurable
class DenseGrid:
    positive_settings = ("lr", "batch_size", "samples", "resolution")  # checked when the sweep expands
    capabilities = ("device",)  # harness.core.method.CAPABILITIES

    def __init__(self, scene, seed: int, resolution: int = 48, samples: int = 64, batch_size: int = 1024,
                 lr: float = 0.05, device: str = "auto"):
        self.device = pick_device(device)
        self.batch_size, self.samples, self.seed = int(batch_size), int(samples), int(seed)
        self.near, self.far = float(scene.near), float(scene.far)
        box = torch.as_tensor(scene.bbox, dtype=torch.float32, device=self.device)
        self.lo, self.size = box[0], box[1] - box[0]
        self.background = torch.as_tensor(scene.background, dtype=torch.float32, device=self.device)
        gen = torch.Generator().manual_seed(self.seed)
        init = torch.randn(1, 4, resolution, resolution, resolution, generator=gen) * 0.1
        self.grid = torch.nn.Parameter(init.to(self.device))  # channels: density, r, g, b
        self.opt = torch.optim.Adam([self.grid], lr=lr)

    def _rays(self, origins, directions, jitter: torch.Generator | None) -> dict[str, torch.Tensor]:
        o, d = origins.to(self.device), directions.to(self.device)
        n, s = o.shape[0], self.samples
        edges = torch.linspace(self.near, self.far, s + 1, device=self.device)
        step = (self.far - self.near) / s
        offset = torch.rand(n, s, generator=jitter).to(self.device) if jitter is not None else torch.full((n, s), 0.5)
        t = edges[:-1] + offset.to(self.device) * step  # (n, s)
        points = o[:, None, :] + t[..., None] * d[:, None, :]
        coords = (points - self.lo) / self.size * 2 - 1  # grid_sample's [-1, 1], x first
        values = F.grid_sample(self.grid, coords.view(1, n, s, 1, 3), align_corners=True, padding_mode="zeros")
        values = values.view(4, n * s).T  # outside the box: zeros, i.e. thin density and grey
        inside = ((coords > -1) & (coords < 1)).all(-1).view(-1)
        sigma = F.softplus(values[:, 0]) * inside
        ray_index = torch.arange(n, device=self.device).repeat_interleave(s)
        return composite(sigma, torch.sigmoid(values[:, 1:]), step, ray_index, n, t=t.reshape(-1),
                         background=self.background, impl="torch")

    def train_step(self, step: int, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        jitter = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        out = self._rays(batch["origins"], batch["directions"], jitter)
        loss = F.mse_loss(out["rgb"], batch["rgb"].to(self.device))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.item()}

    @torch.no_grad()
    def render(self, origins: torch.Tensor, directions: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self._rays(origins, directions, None)
        return {"rgb": out["rgb"].clamp(0, 1).cpu(), "depth": out["depth"].cpu(), "acc": out["acc"].cpu()}

    def state_dict(self) -> dict:
        # copies: the optimiser hands out its live moment tensors, which later steps change in place
        return {"grid": self.grid.detach().clone(), "opt": copy.deepcopy(self.opt.state_dict())}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.grid.copy_(state["grid"].to(self.device))
        self.opt.load_state_dict(state["opt"])

    def stats(self) -> dict[str, float]:
        return {"params": float(self.grid.numel()), "bytes": float(self.grid.numel() * self.grid.element_size())}
