"""Plenoxels (Fridovich-Keil, Yu et al., CVPR 2022) as a harness Method, in plain PyTorch.

A voxel grid of density and SH coefficients, trilinearly interpolated at fixed-step samples
inside the box, volume-rendered with early termination; trained with the loss family of
losses.py (L2/L1 + SSIM reconstruction, TV, sparsity, second-order smoothness) by RMSProp or
Adam with per-group learning rates and svox2's delayed exponential schedule. Coarse-to-fine: the
grid is resampled at twice the resolution at `upsample_steps`; voxels whose maximum rendering
weight since the last resample stayed below `prune_weight` (or whose density is below
`prune_density`) are freed at `prune_steps` and at each upsampling (svox2's resample);
prune_by='none' keeps every voxel (the unpruned reference). Colour is
sigmoid(SH . basis(view direction)), as in svox2.
"""

from __future__ import annotations

import logging
import time

import gin
import torch
import torch.nn.functional as F

from baselines.plenoxels.compact import lookup, remap, touched_rows
from baselines.plenoxels.grid import SparseGrid
from baselines.plenoxels.losses import Reconstruction, Smoothness, Sparsity, TVLoss, mse
from baselines.plenoxels.optim import GridOptimizer, lr_factor
from baselines.plenoxels.sampling import Occupancy, sample_rays
from harness.core.method import pick_device, tensor_bytes
from kernels.grid import as_resolution, interpolate
from kernels.render import composite, early_termination
from kernels.sh import check_degree, num_coeffs, sh_basis

log = logging.getLogger(__name__)

ACTIVATIONS = ("relu", "softplus")
PRUNE_BY = ("weight", "density", "none")
BACKGROUNDS = ("scene", "learned")
KERNEL_IMPLS = ("auto", "torch", "triton")
STATE_VERSION = 1


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(f"Plenoxels: {msg}")


def _steps(name: str, steps) -> tuple[int, ...]:
    steps = tuple(int(s) for s in steps)
    _check(list(steps) == sorted(set(steps)) and all(s > 0 for s in steps),
           f"{name} must be increasing positive steps, got {steps}")
    return steps


@gin.configurable
class Plenoxels:
    """See the module docstring. Lengths are world units except `step_size` (in voxels of the
    current grid); densities are per world unit, before the activation. `resolution` (an int,
    or (X, Y, Z) for boxes that are not cubes, e.g. NDC for forward-facing scenes) is the final
    one: training starts at resolution / 2^len(upsample_steps) along every axis."""

    # checked when the sweep expands (harness.run.sweep.check_positive_settings)
    positive_settings = ("lr_density", "lr_sh", "lr_background", "batch_size", "lr_decay_steps")
    capabilities = ("patches", "device", "telemetry", "gradients", "samples",
                    "memory", "data_parallel", "stages")  # harness.core.method.CAPABILITIES
    GROUPS = ("density", "sh", "background")  # optimiser groups, in the order train_step differentiates them

    def __init__(self, scene, seed: int, *, resolution=128, upsample_steps=(400, 1500),
                 sh_degree: int = 2, batch_size: int = 4096, optimizer: str = "rmsprop",
                 lr_density: float = 3.0, lr_sh: float = 0.05, lr_final_factor: float = 0.1,
                 lr_decay_steps: int = 3000, lr_density_delay_steps: int = 0,
                 lr_density_delay_mult: float = 1e-2, rms_beta: float = 0.99, step_size: float = 1.0,
                 density_activation: str = "relu", init_density: float = 0.1,
                 prune_steps=(100, 250, 800, 2000), prune_by: str = "weight", prune_weight: float = 0.01,
                 prune_density: float = 5.0, prune_dilation: int = 1, occupancy_every: int = 100,
                 occupancy_threshold: float = 3.0,
                 train_stop_transmittance: float = 1e-4, stop_transmittance: float = 1e-4,
                 render_chunk: int = 16384, background: str = "scene", lr_background: float = 0.01,
                 reconstruction: Reconstruction | None = None, tv: TVLoss | None = None,
                 sparsity: Sparsity | None = None, smoothness: Smoothness | None = None,
                 kernels: str = "auto", device: str = "auto"):
        check_degree(sh_degree)
        self.upsample_steps = _steps("upsample_steps", upsample_steps)
        self.prune_steps = _steps("prune_steps", prune_steps)
        levels = 2 ** len(self.upsample_steps)
        final = as_resolution(resolution) if isinstance(resolution, int) or len(resolution) == 3 else ()
        start = tuple(r // levels for r in final)
        _check(len(final) == 3 and min(start) >= 8 and all(s * levels == r for s, r in zip(start, final)),
               f"resolution {resolution} must be an int or 3 ints, each (>= 8) * 2^len(upsample_steps) "
               f"(upsample_steps={self.upsample_steps})")
        _check(batch_size > 0, f"batch_size must be > 0, got {batch_size}")
        _check(0 < step_size <= 2, f"step_size must be in (0, 2] voxels, got {step_size}")
        _check(density_activation in ACTIVATIONS,
               f"density_activation must be one of {ACTIVATIONS}, got {density_activation!r}")
        _check(init_density > 0, f"init_density must be > 0, got {init_density}")
        _check(occupancy_every > 0, f"occupancy_every must be > 0, got {occupancy_every}")
        _check(prune_weight >= 0 and prune_dilation >= 0, "prune_weight and prune_dilation must be >= 0")
        _check(prune_by in PRUNE_BY, f"prune_by must be one of {PRUNE_BY}, got {prune_by!r}")
        _check(background in BACKGROUNDS, f"background must be one of {BACKGROUNDS}, got {background!r}")
        _check(0 < rms_beta < 1, f"rms_beta must be in (0, 1), got {rms_beta}")
        _check(lr_density_delay_steps >= 0 and 0 < lr_density_delay_mult <= 1,
               "lr_density_delay_steps must be >= 0 and lr_density_delay_mult in (0, 1]")
        _check(0 <= stop_transmittance < 1 and 0 <= train_stop_transmittance < 1,
               "stop_transmittance and train_stop_transmittance must be in [0, 1)")
        self.seed, self.batch_size = int(seed), int(batch_size)
        self.sh_degree, self.n_basis = sh_degree, num_coeffs(sh_degree)
        self.step_size, self.activation = float(step_size), density_activation
        self.lr_final_factor, self.lr_decay_steps = lr_final_factor, int(lr_decay_steps)
        self.prune_weight, self.prune_dilation = float(prune_weight), int(prune_dilation)
        self.prune_by, self.prune_density = prune_by, float(prune_density)
        self.density_delay = (int(lr_density_delay_steps), float(lr_density_delay_mult))
        self.occupancy_every, self.occupancy_threshold = int(occupancy_every), occupancy_threshold
        self.train_stop, self.render_stop = train_stop_transmittance, stop_transmittance
        self.render_chunk = int(render_chunk)
        # implementation of the hot ops (kernels/): 'auto' = Triton on CUDA tensors, else PyTorch
        # ('cuda' is only the compositing kernel, so not a choice for the whole method)
        _check(kernels in KERNEL_IMPLS, f"kernels must be one of {KERNEL_IMPLS}, got {kernels!r}")
        self.kernels = kernels
        # the loss terms the config references (`Plenoxels.tv = @TVLoss()`); a term not given is not
        # used, and the reconstruction defaults to plain L2 (the parts are gin.register'ed: building
        # one here never reads Gin bindings, so the config says what is used)
        self.reconstruction = reconstruction if reconstruction is not None else Reconstruction()
        self.tv, self.sparsity, self.smoothness = tv, sparsity, smoothness
        self.patch_size = self.reconstruction.patch_size  # the trainer samples p x p patches
        self.device = pick_device(device)
        self.near, self.far = float(scene.near), float(scene.far)
        # forward-facing scenes (LLFF) are marched in NDC, as the paper does; the box then is [-1, 1]^3
        self.ndc = dict(scene.extras["ndc"]) if scene.ndc else None
        if self.ndc is not None:
            self.near, self.far = 0.0, 1e4  # t along unit NDC directions; the box clips the ray
        bbox = torch.as_tensor(scene.bbox, dtype=torch.float32, device=self.device)
        # 'learned': a colour optimised with the grid (scenes whose background is unknown); its
        # logit starts at the scene's colour
        self.background_mode = background
        self.scene_background = torch.as_tensor(scene.background, dtype=torch.float32, device=self.device)
        self.background_logit = torch.logit(self.scene_background.clamp(0.01, 0.99)).view(1, 3)
        # the initial grid is constant (as svox2's): the seed only drives the per-step TV draws
        self.grid = SparseGrid.dense(start, bbox[0], bbox[1], 3 * self.n_basis, init_density)
        self.optim = GridOptimizer(optimizer, {"density": lr_density, "sh": lr_sh,
                                               "background": lr_background}, beta2=rms_beta)
        self.timing = {"train_rays": 0, "train_s": 0.0, "render_rays": 0, "render_s": 0.0}
        self.last_step: int | None = None  # the last step trained, for telemetry()
        self.gradient_hook = None  # set by the harness (harness/run/gradients.py): sees each step's gradients
        self.data_parallel = None  # set by the harness when the trial runs on several processes (distributed.py)
        self.frozen: frozenset[str] = frozenset()  # groups a training stage does not update (harness/run/stages.py)
        self.comm: dict[str, float] = {}  # data parallel: bytes all-reduced in the last step (telemetry)
        # set by a method built on this one (baselines/plenoxels_temporal): rays(step) -> (origins, directions)
        # rendered with the batch's, and losses(step, rgb of those rays, density, d_rows, sh, s_rows) -> terms
        self.auxiliary = None
        self.schedule_origin = 0  # the step the learning-rate schedule counts from (a later time step's start)
        self.max_weight = torch.zeros(self.grid.n_rows, device=self.device)  # per row, since last resample
        self.n_upsampled = self.n_pruned = 0
        self.refresh_occupancy(step=0)

    # ---- schedules -------------------------------------------------------------------------
    def _step_world(self) -> float:
        return self.step_size * float(self.grid.voxel_size.min())

    def refresh_occupancy(self, step: int | None = None) -> None:
        """Rebuild the empty-space-skipping structure from the current densities (the schedule
        does this every occupancy_every steps; call it after editing the grid by hand)."""
        # until the first resample every voxel still holds init_density: skip nothing but zeros
        started = self.n_pruned + self.n_upsampled > 0
        threshold = self.occupancy_threshold if started else 0.0
        self.occupancy = Occupancy.build(self.grid, threshold, self.step_size)
        if step is not None:
            self.occupancy_step = step

    def _keep(self) -> torch.Tensor:
        """Voxels (R^3,) bool to keep: max rendering weight since the last resample above
        prune_weight (or activated density above prune_density), dilated by prune_dilation voxels
        so surfaces can still move."""
        if self.prune_by == "none":  # the unpruned baseline: every allocated voxel stays
            return self.grid.links >= 0
        if self.prune_by == "weight":
            keep = self.grid.volume(self.max_weight) > self.prune_weight
        else:
            keep = self._activate(self.grid.density_volume()) > self.prune_density
        keep = keep.float()[None, None]
        if self.prune_dilation > 0:
            k = 2 * self.prune_dilation + 1
            keep = F.max_pool3d(keep, k, stride=1, padding=self.prune_dilation)
        return keep.view(-1) > 0

    def _apply_schedule(self, step: int) -> None:
        """Upsample / prune when their steps are reached, refresh occupancy every
        occupancy_every steps; all depend only on (state, step), so resumed runs repeat them."""
        changed = False
        # pruning first: when both fall on one step, the weights tracked so far are of the current grid's
        # rows (an upsampled grid has seen none), and they follow the rows the prune keeps
        while self.n_pruned < len(self.prune_steps) and step >= self.prune_steps[self.n_pruned]:
            before = self.grid.n_rows
            self.grid, kept = self.grid.pruned(self._keep())
            self.optim.select_rows(kept)
            self.max_weight = self.max_weight[kept]
            self.n_pruned, changed = self.n_pruned + 1, True
            log.info("step %d: pruned %d -> %d voxels", step, before, self.grid.n_rows)
        while self.n_upsampled < len(self.upsample_steps) and step >= self.upsample_steps[self.n_upsampled]:
            self.grid = self.grid.upsampled(tuple(2 * r for r in self.grid.resolution), self._keep())
            self.optim.reset()
            self.max_weight = torch.zeros(self.grid.n_rows, device=self.device)  # of the new rows: none seen
            self.n_upsampled, changed = self.n_upsampled + 1, True
            log.info("step %d: upsampled to %s, %d voxels allocated", step, "x".join(map(str, self.grid.resolution)),
                     self.grid.n_rows)
        if changed:
            self.max_weight = torch.zeros(self.grid.n_rows, device=self.device)
        if changed or step >= self.occupancy_step + self.occupancy_every:
            self.refresh_occupancy(step)

    # ---- rendering -------------------------------------------------------------------------
    def _march_rays(self, origins, directions):
        """Rays to march (NDC for forward-facing scenes, unit directions); SH always sees the
        world-space view direction."""
        if self.ndc is None:
            return origins, directions
        from harness.core.data.ndc import ndc_rays

        o, d = ndc_rays(origins, directions, float(self.ndc["focal"]), int(self.ndc["width"]),
                        int(self.ndc["height"]), float(self.ndc.get("near", 1.0)))
        return o, d / d.norm(dim=-1, keepdim=True)

    def _samples(self, origins, directions):
        """Packed samples in occupied space: ray index, t, corner rows and weights (8, S)."""
        ray_index, t, coords = sample_rays(self.grid, self.occupancy, origins, directions,
                                           self._step_world(), self.near, self.far)
        rows, weight = self.grid.corners(coords)
        return ray_index, t, rows, weight

    def _activate(self, raw: torch.Tensor) -> torch.Tensor:
        return F.relu(raw) if self.activation == "relu" else F.softplus(raw)

    def _sigma(self, density, rows, weight) -> torch.Tensor:
        return self._activate(interpolate(density, rows, weight, impl=self.kernels)[:, 0])

    def background(self, logit: torch.Tensor | None = None) -> torch.Tensor:
        """The background colour (3,): the scene's, or the learned one (from `logit` when given,
        so gradients reach it)."""
        if self.background_mode == "scene":
            return self.scene_background
        return torch.sigmoid((self.background_logit if logit is None else logit)[0])

    @torch.no_grad()
    def _shaded(self, sigma, ray_index, n_rays, stop: float) -> torch.Tensor:
        """Indices of samples worth shading: density > 0 (exact for ReLU) and, with stop > 0,
        transmittance in front of them >= stop (early termination)."""
        keep = sigma > 0
        if stop > 0:
            kept = torch.nonzero(keep)[:, 0]
            alive = early_termination(sigma[kept] * self._step_world(), ray_index[kept], n_rays, stop,
                                      impl=self.kernels)
            keep[kept[~alive]] = False
        return torch.nonzero(keep)[:, 0]

    def _colour(self, sh, rows, weight, directions, ray_index) -> torch.Tensor:
        """sigmoid(SH coefficients . basis(direction)) per sample (S, 3)."""
        coeffs = interpolate(sh, rows, weight, impl=self.kernels).view(-1, 3, self.n_basis)
        basis = sh_basis(directions, self.sh_degree)[ray_index]
        return torch.sigmoid(torch.bmm(coeffs, basis.unsqueeze(2)).squeeze(2))

    def _composite(self, sigma, rgb, t, ray_index, n_rays, background) -> dict[str, torch.Tensor]:
        return composite(sigma, rgb, self._step_world(), ray_index, n_rays, t=t, background=background,
                         impl=self.kernels)

    def _chunks(self, origins: torch.Tensor, directions: torch.Tensor, stop: float):
        """Per chunk of `render_chunk` rays (no grad): directions, ray count, the samples worth
        shading (ray_index, t, rows, weight) and their density."""
        for i in range(0, origins.shape[0], self.render_chunk):
            o = origins[i:i + self.render_chunk].to(self.device)
            d = directions[i:i + self.render_chunk].to(self.device)
            ray_index, t, rows, weight = self._samples(*self._march_rays(o, d))
            sigma = self._sigma(self.grid.density, rows, weight)
            sel = self._shaded(sigma, ray_index, o.shape[0], stop)
            yield d, o.shape[0], ray_index[sel], t[sel], rows[:, sel], weight[:, sel], sigma[sel]

    @torch.no_grad()
    def render(self, origins: torch.Tensor, directions: torch.Tensor) -> dict[str, torch.Tensor]:
        t0 = time.perf_counter()
        outs = []
        for d, n, ray_index, t, rows, weight, sigma in self._chunks(origins, directions, self.render_stop):
            rgb = self._colour(self.grid.sh, rows, weight, d, ray_index)
            r = self._composite(sigma, rgb, t, ray_index, n, self.background())
            outs.append({k: r[k].cpu() for k in ("rgb", "depth", "acc")})
        self.timing["render_rays"] += origins.shape[0]
        self.timing["render_s"] += time.perf_counter() - t0
        if not outs:
            return {"rgb": torch.zeros(0, 3), "depth": torch.zeros(0), "acc": torch.zeros(0)}
        return {k: torch.cat([o[k] for o in outs]) for k in ("rgb", "depth", "acc")}

    def ray_samples(self, origins: torch.Tensor, directions: torch.Tensor, view=None) -> dict:
        """The samples render() composites (harness.core.method.SamplesProtocol); every view alike."""
        from baselines.plenoxels.inspect import ray_samples

        return ray_samples(self, origins, directions)

    # ---- training --------------------------------------------------------------------------
    def _draws(self, step: int) -> dict[str, tuple]:
        """Random voxel draws of the grid regularisers for this step (a pure function of seed and
        step, so resumed runs draw the same)."""
        draws = {}
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(step))
        for name, term in (("tv", self.tv), ("smoothness", self.smoothness)):
            if term is not None and term.active:
                draws[name] = term.draw(self.grid, gen)
        return draws

    @staticmethod
    def _rows_for(draws: dict, which: str, terms: dict) -> list[torch.Tensor]:
        """The drawn rows of the terms whose `which` ('density' | 'sh') weight is on."""
        return [r for name, rows in draws.items() if getattr(terms[name], f"weight_{which}") > 0
                for r in rows]

    def train_step(self, step: int, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        t_start = time.perf_counter()
        self._apply_schedule(step)
        origins = batch["origins"].to(self.device)
        directions = batch["directions"].to(self.device)
        target = batch["rgb"].to(self.device)
        n_target = origins.shape[0]  # the batch's rays; an auxiliary's follow them
        extra = self.auxiliary.rays(step) if self.auxiliary is not None else None
        if extra is not None:
            origins = torch.cat([origins, extra[0].to(self.device)])
            directions = torch.cat([directions, extra[1].to(self.device)])
        n_rays, n_rows = origins.shape[0], self.grid.n_rows
        ray_index, t, rows, weight = self._samples(*self._march_rays(origins, directions))
        draws = self._draws(step)
        terms = {"tv": self.tv, "smoothness": self.smoothness}

        # density of every sample, computed on the touched rows only (see compact.py)
        d_rows, d_local = touched_rows(n_rows, rows, *self._rows_for(draws, "density", terms))
        density = self.grid.density.index_select(0, d_rows).requires_grad_(True)
        sigma = self._sigma(density, lookup(d_local, rows), weight)
        sel = self._shaded(sigma, ray_index, n_rays, self.train_stop)
        ray_index, t, rows, weight = ray_index[sel], t[sel], rows[:, sel], weight[:, sel]
        # colour of the shaded samples only
        s_rows, s_local = touched_rows(n_rows, rows, *self._rows_for(draws, "sh", terms))
        sh = self.grid.sh.index_select(0, s_rows).requires_grad_(True)
        rgb = self._colour(sh, lookup(s_local, rows), weight, directions, ray_index)
        bg_logit = self.background_logit.clone().requires_grad_(self.background_mode == "learned")
        out = self._composite(sigma[sel], rgb, t, ray_index, n_rays, self.background(bg_logit))

        rgb_out = out["rgb"][:n_target]
        losses = self.reconstruction(rgb_out, target)
        per_ray = tuple(losses)  # means over the batch's rays (or its patches)
        if self.sparsity is not None:
            losses.update(self.sparsity(sigma))
        for name, rows_drawn in draws.items():
            d_idx = tuple(remap(d_local, r) for r in rows_drawn)
            s_idx = tuple(remap(s_local, r) for r in rows_drawn)
            losses.update(terms[name](density, sh, d_idx, s_idx))
        if self.auxiliary is not None:
            losses.update(self.auxiliary.losses(step, out["rgb"][n_target:], density, d_rows, sh, s_rows))
        total = sum(losses.values())
        params = [density, sh] + ([bg_logit] if self.background_mode == "learned" else [])
        dp = self.data_parallel
        objective = local = total if dp is None else self._shard_objective(dp, losses, per_ray, sigma)
        grads = torch.autograd.grad(objective, params, allow_unused=True)
        if dp is not None:  # the global batch's gradient on the union of the ranks' touched rows
            grads, d_rows, s_rows, objective = self._all_reduce(dp, grads, d_rows, s_rows, objective)
        if self.gradient_hook is not None:  # before the update: a divergence leaves the grid as it was
            self.gradient_hook(step, objective, {g: [x] for g, x in zip(self.GROUPS, grads)})
        self._update(step, grads, d_rows, s_rows)
        self._track_weights(out["weights"].detach(), rows, weight)
        if dp is not None:  # pruning reads the maximum weight over every rank's rays
            dp.max_(self.max_weight)
            self.comm = {"comm/bytes": float(dp.bytes_step), "comm/touched_rows_bytes": self._touched_bytes}
        result = {k: float(v.detach()) for k, v in losses.items()}
        result["loss"] = float(total.detach())
        if dp is not None:  # this rank's part of the global loss, as the runner's ray-weighted sum needs it
            result["loss"] = float(local.detach()) / dp.weight if dp.weight else 0.0
        result.setdefault("mse", float(mse(rgb_out.detach(), target)))
        result["samples_per_ray"] = sel.numel() / n_rays
        self.timing["train_rays"] += n_rays
        self.timing["train_s"] += time.perf_counter() - t_start
        return result

    @staticmethod
    def _shard_objective(dp, losses: dict, per_ray: tuple, sigma: torch.Tensor) -> torch.Tensor:
        """This rank's part of the global batch's loss (data parallel): means over rays weighted by the
        rank's share of the rays, the sparsity mean over samples by its share of the samples, and the
        regularisers on drawn voxels (the same on every rank) by 1 / ranks; their sum over the ranks is
        the one-process loss of the global batch, and so are the gradients."""
        objective = torch.zeros((), device=sigma.device)
        for name, value in losses.items():
            if name in per_ray:
                objective = objective + value * dp.weight
            elif name == "sparsity":
                count = dp.sum_(torch.tensor([float(sigma.numel())], dtype=torch.float64, device=sigma.device))
                share = sigma.numel() / float(count) if float(count) else 0.0
                objective = objective + value * share
                # reported so that the runner's ray-weighted sum over ranks is the global mean over samples
                losses[name] = value * (share / dp.weight if dp.weight else 0.0)
            else:
                objective = objective + value / dp.size
        return objective

    def _all_reduce(self, dp, grads, d_rows, s_rows, objective):
        """Sum the ranks' gradients (data parallel). Each rank touched other rows, so the gradients
        are scattered into dense (rows, channels) tensors with a touched mask per group and summed in
        one all-reduce (with the background's gradient and the loss); the rows to update are those
        any rank touched, which are the rows one process touches for the global batch (a ray's samples
        do not depend on the other rays). Costs 4 bytes x rows x (channels + 2) per step."""
        n, dev = self.grid.n_rows, self.device
        self._touched_bytes = float(4 * (d_rows.numel() * (1 + self.grid.density.shape[1])
                                          + s_rows.numel() * (1 + self.grid.sh.shape[1])))
        dense_d = torch.zeros(n, *self.grid.density.shape[1:], device=dev)
        dense_s = torch.zeros(n, *self.grid.sh.shape[1:], device=dev)
        mask = torch.zeros(2, n, device=dev)
        if grads[0] is not None:
            dense_d.index_copy_(0, d_rows, grads[0])
        if grads[1] is not None:
            dense_s.index_copy_(0, s_rows, grads[1])
        mask[0, d_rows] = 1.0
        mask[1, s_rows] = 1.0
        bg = (grads[2] if len(grads) > 2 and grads[2] is not None else torch.zeros_like(self.background_logit)) \
            if self.background_mode == "learned" else torch.zeros(0, device=dev)
        parts = [dense_d.reshape(-1), dense_s.reshape(-1), mask.reshape(-1), bg.reshape(-1).float(),
                 objective.detach().reshape(1).float()]
        flat = dp.sum_(torch.cat(parts))
        sizes = [p.numel() for p in parts]
        dense_d, dense_s, mask, bg, loss = torch.split(flat, sizes)
        d_rows, s_rows = torch.nonzero(mask[:n] > 0)[:, 0], torch.nonzero(mask[n:] > 0)[:, 0]
        out = [dense_d.view(n, -1)[d_rows], dense_s.view(n, -1)[s_rows]]
        if self.background_mode == "learned":
            out.append(bg.view_as(self.background_logit))
        return tuple(out), d_rows, s_rows, loss[0]

    def _lr_scales(self, step: int) -> dict[str, float]:
        """Each group's learning-rate factor at `step` (svox2's schedule; density's with its delay)."""
        decay = (self.lr_final_factor, self.lr_decay_steps)
        step = step - self.schedule_origin
        common = lr_factor(step, *decay)
        return {"density": lr_factor(step, *decay, *self.density_delay), "sh": common, "background": common}

    def _update(self, step: int, grads, d_rows, s_rows) -> None:
        scales = self._lr_scales(step)
        self.last_step = step
        frozen = self.frozen
        grads = tuple(None if g in frozen else x for g, x in zip(("density", "sh", "background"), grads))
        if grads[0] is not None:
            self.optim.step("density", self.grid.density, d_rows, grads[0], scales["density"])
        if grads[1] is not None:
            self.optim.step("sh", self.grid.sh, s_rows, grads[1], scales["sh"])
        if len(grads) > 2 and grads[2] is not None:
            zero = torch.zeros(1, dtype=torch.long, device=self.device)
            self.optim.step("background", self.background_logit, zero, grads[2], scales["background"])

    stage_values: tuple[str, ...] = ()  # no value a training stage may set (harness/run/stages.py)

    def freeze(self, groups: frozenset[str]) -> None:
        """Do not update `groups` (a training stage's frozen groups); their optimiser state is kept."""
        self.frozen = frozenset(groups)

    def parameter_groups(self) -> dict[str, list[torch.Tensor]]:
        """The trained tensors by optimiser group (the gradients the hook sees are of the rows a step
        touched: density and SH rows, the background logit when it is learned)."""
        groups = {"density": [self.grid.density], "sh": [self.grid.sh]}
        if self.background_mode == "learned":
            groups["background"] = [self.background_logit]
        return groups

    def telemetry(self) -> dict[str, float]:
        """The last training step's learning rate per group, and the grid: allocated voxels,
        resolution, occupied fraction of the cells."""
        if self.last_step is None:
            return {}
        scales = self._lr_scales(self.last_step)
        out = {f"lr/{g}": self.optim.lrs[g] * scales[g] for g in self.parameter_groups()}
        out.update({"model/voxels": float(self.grid.n_rows), "model/resolution": float(max(self.grid.resolution)),
                    "model/occupied_fraction": float(self.occupancy.fine.float().mean())})
        out.update(self.comm)
        return out

    def _track_weights(self, sample_weight, rows, weight, into: torch.Tensor | None = None) -> None:
        """Running max of each voxel's rendering weight, over the samples it interpolates."""
        src = (sample_weight.unsqueeze(0) * (weight > 0)).reshape(-1)
        target = self.max_weight if into is None else into
        target.scatter_reduce_(0, rows.reshape(-1).long(), src, "amax")

    @torch.no_grad()
    def voxel_weights(self, origins: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
        """Max rendering weight (n_rows,) each allocated voxel carries over these rays, as training
        tracks it for weight pruning."""
        out = torch.zeros(self.grid.n_rows, device=self.device)
        for _, n, ray_index, t, rows, weight, sigma in self._chunks(origins, directions, self.train_stop):
            rgb = torch.zeros(sigma.shape[0], 3, device=self.device)
            r = self._composite(sigma, rgb, t, ray_index, n, self.background())
            self._track_weights(r["weights"], rows, weight, into=out)
        return out

    # ---- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "grid": self.grid.state_dict(),
                "optimizer": self.optim.state_dict(), "max_weight": self.max_weight.clone(),
                "n_upsampled": self.n_upsampled, "n_pruned": self.n_pruned,
                "occupancy": self.occupancy.state_dict(), "occupancy_step": self.occupancy_step,
                "background_logit": self.background_logit.clone()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"Plenoxels: state version {state.get('version')!r} is not "
                             f"{STATE_VERSION}; the checkpoint is from another code version")
        self.grid = SparseGrid.from_state(state["grid"], self.grid.bbox_min, self.grid.bbox_max)
        self.optim.load_state_dict(state["optimizer"], self.device)
        self.max_weight = state["max_weight"].to(self.device).clone()
        self.n_upsampled, self.n_pruned = int(state["n_upsampled"]), int(state["n_pruned"])
        self.occupancy = Occupancy.from_state(state["occupancy"], self.device)
        self.occupancy_step = int(state["occupancy_step"])
        if "background_logit" in state:
            self.background_logit = state["background_logit"].to(self.device).clone()

    def stats(self) -> dict[str, float]:
        """Grid size against the dense grid of the same resolution, and throughput in this
        process (rays per second of train_step and render calls)."""
        g = self.grid
        n_params = g.density.numel() + g.sh.numel()
        elem = g.density.element_size()
        grid_bytes = elem * n_params + g.links.element_size() * g.links.numel()
        dense_bytes = elem * g.links.numel() * (1 + g.sh.shape[1])
        out = {"resolution": float(max(g.resolution)), "voxels": float(g.n_rows), "params": float(n_params),
               "grid_bytes": float(grid_bytes), "dense_bytes": float(dense_bytes),
               "memory_fraction": grid_bytes / dense_bytes}
        tm = self.timing
        if tm["train_s"] > 0:
            out["train_rays_per_s"] = tm["train_rays"] / tm["train_s"]
        if tm["render_s"] > 0:
            out["render_rays_per_s"] = tm["render_rays"] / tm["render_s"]
        return out

    def memory_components(self) -> dict[str, int]:
        """Bytes of the persistent state by part ('memory' capability): the grid (density and SH rows,
        links, row voxels, background logit), the occupancy structure, the optimiser's moments, and the
        per-row maximum rendering weight kept for pruning."""
        g, occ = self.grid, self.occupancy
        return {"grid": tensor_bytes(g.density, g.sh, g.links, g.voxels, self.background_logit),
                "occupancy": tensor_bytes(occ.fine, occ.coarse, occ.box_min, occ.box_max),
                "optimizer": tensor_bytes(self.optim.state), "prune_weights": tensor_bytes(self.max_weight)}
