"""Block-NeRF (Tancik et al., CVPR 2022), one block per trial, as a harness Method.

The method is built with the whole scene and a block index; it partitions the scene's training
cameras (baselines.block_nerf.partition), keeps the images of its block and the test views of its
block, and exposes them as `trial_scene` (the runner trains, validates and evaluates on that). Its
`evaluate` hook renders each test view with the view's conditioning (appearance code by protocol,
exposure from the metadata) and scores through harness.core.metrics; it adds the "block", pose and
visibility facts to metrics.json.
"""

from __future__ import annotations

import logging

import gin
import numpy as np
import torch

from baselines.block_nerf import protocol as proto
from baselines.block_nerf.depth import DepthLoss, depth_loss
from baselines.block_nerf.field import BlockField
from baselines.block_nerf.model import MipMLP, VisibilityMLP, exposure_input, init_codes, param_count, pixel_radius
from baselines.block_nerf.partition import BlockPartition
from baselines.block_nerf.parts import Appearance, MipField, Optimization, PoseNoise, PoseRefinement, Visibility
from baselines.block_nerf.pose import PoseOffsets, perturb_poses, pose_errors, pose_errors_aligned
from baselines.block_nerf.sampling import ShardedDraws
from baselines.block_nerf.training import ComponentOptimisers, autocast
from harness.core.data.rays import image_rays, rays_for_pixels
from harness.core.data.scene import Scene, Split
from harness.core.errors import ConfigError
from harness.core.method import pick_device, tensor_bytes

log = logging.getLogger(__name__)
DEPTH_EVAL_STRIDE = 4  # every 4th pixel of the test views scores the rendered depth (depth_record)
POSE_GROUPS = ("image", "sequence")  # one pose offset per training image, or per capture sequence (drive)
STATE_VERSION = 2  # 2: the pose translation has its own optimizer ("pose_translation")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(f"BlockNeRF: {msg}")


def _part(name: str, value, cls: type, default: type | None = None):
    """The part given as BlockNeRF.`name` (an instance of `cls`), else `default()` (None: not used)."""
    if value is None:
        return None if default is None else default()
    if not isinstance(value, cls):
        raise ConfigError(f"BlockNeRF.{name} = {value!r:.80}: expected @{cls.__name__}() or None")
    return value


def subset_split(split: Split, index: np.ndarray, c2w: np.ndarray | None = None) -> Split:
    out = split.subset(index)
    if c2w is not None:
        out.cameras.c2w = c2w.astype(np.float32)
    return out


@gin.configurable
class BlockNeRF:
    """See the module docstring and docs/block_nerf.md for every argument. The settings come in parts
    (baselines/block_nerf/parts.py): `field`, `appearance` and `optimization` default to the part with
    its defaults; `visibility`, `pose_refinement` and `pose_noise` None mean no visibility network,
    no pose refinement and no noise on the training poses."""

    # checked when the sweep expands (harness.run.sweep.check_positive_settings), with those of the parts
    positive_settings = ("batch_size",)
    # harness.core.method.CAPABILITIES
    capabilities = ("own_scene", "views", "device", "telemetry", "gradients", "samples", "memory", "data_parallel",
                    "stages")
    # what a training stage may set for its steps (harness/run/stages.py)
    stage_values = ("coarse_loss_weight", "visibility_weight", "depth_weight")

    def __init__(self, scene: Scene, seed: int, *, block: int = 0, partition: BlockPartition | None = None,
                 batch_size: int = 1024, render_chunk: int = 4096, device: str = "auto",
                 field: MipField | None = None, appearance: Appearance | None = None,
                 visibility: Visibility | None = None, pose_groups: str = "image", pose_noise: PoseNoise | None = None,
                 pose_refinement: PoseRefinement | None = None, optimization: Optimization | None = None,
                 depth: DepthLoss | None = None):
        field = _part("field", field, MipField, MipField)
        depth = _part("depth", depth, DepthLoss)
        appearance = _part("appearance", appearance, Appearance, Appearance)
        visibility = _part("visibility", visibility, Visibility)
        pose_noise = _part("pose_noise", pose_noise, PoseNoise)
        pose_refinement = _part("pose_refinement", pose_refinement, PoseRefinement)
        optimization = _part("optimization", optimization, Optimization, Optimization)
        _check(batch_size > 0, f"batch_size must be > 0, got {batch_size}")
        _check(pose_groups in POSE_GROUPS, f"pose_groups must be one of {POSE_GROUPS}, got {pose_groups!r}")
        self.seed, self.block_index, self.batch_size = int(seed), int(block), int(batch_size)
        self.device = pick_device(device)
        self.partition = partition or BlockPartition()
        self.scene = scene
        train, test = scene.split("train"), scene.split("test")
        self._select_block(train, test)
        self.true_c2w = train.cameras.c2w[self.train_index].astype(np.float64)
        self.pose_groups, self.pose_group = pose_groups, self._pose_group(train, pose_groups)
        # self.pose_noise: the noise's record (pose_record), not the part
        self.noisy_c2w, self.pose_noise = self._perturbed_poses(pose_noise if pose_noise is not None else PoseNoise(),
                                                                pose_groups)
        self.trial_scene = Scene(
            name=scene.name, path=scene.path, format=scene.format, background=scene.background,
            splits={"train": subset_split(train, self.train_index, self.noisy_c2w),
                    "test": subset_split(test, self.test_index)},
            near=scene.near, far=scene.far, bbox=scene.bbox, ndc=scene.ndc,
            extras={**scene.extras, "block": self.block.as_record(), **self._block_depth(scene)})
        tr = self.trial_scene.split("train")

        # conditioning
        self.appearance_mode, self.protocol = appearance.mode, appearance.protocol
        n_codes = self._n_codes(appearance, train, test, tr)
        self.use_exposure = appearance.exposure
        _check(not appearance.exposure or train.exposure is not None,
               "Appearance.exposure = True but the scene has no per-frame exposure")
        self.exposure_scale = appearance.exposure_scale
        self.near = float(field.near if field.near is not None else scene.near)
        self.far = float(field.far if field.far is not None else scene.far)
        _check(0 < self.near < self.far, f"need 0 < MipField.near < MipField.far, got {self.near}, {self.far} "
                                          f"(None: the scene's)")

        # networks, codes and pose offsets; the order of their random draws is fixed (results and
        # checkpoints depend on it): the MLP, the visibility MLP (global RNG), then the codes (own generator)
        gen = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)
        a_dim = appearance.dim if appearance.mode != "none" else 0
        mlp = MipMLP(field.pos_freqs, field.dir_freqs, field.depth, field.width, field.skip, field.colour_width, a_dim,
                     appearance.exposure_freqs if appearance.exposure else None)
        vis = (VisibilityMLP(visibility.freqs, field.dir_freqs, visibility.depth, visibility.width)
               if visibility is not None else None)
        self.field = BlockField(self.block.center, self.block.radius, self.near, self.far,
                                pixel_radius(float(np.median(train.cameras.fx))), field.n_coarse, field.n_fine,
                                field.spacing, mlp, vis).to(self.device)
        self.codes = torch.nn.Parameter(init_codes(n_codes, a_dim, gen).to(self.device))
        self.pose = (PoseOffsets(self.pose_noise["n_groups"], pose_refinement.reg_initial, pose_refinement.reg_final,
                                 pose_refinement.reg_steps).to(self.device) if pose_refinement is not None else None)
        self.visibility_weight = visibility.weight if visibility is not None else 0.0
        self.coarse_loss_weight = field.coarse_loss_weight
        # depth supervision (baselines/block_nerf/depth.py) on the trainer's per-ray depth (the scene's maps)
        self.depth_settings, self.depth_weight = depth, (depth.weight if depth is not None else 0.0)
        _check(depth is None or self.trial_scene.extras.get("depth", {}).get("train") is not None,
               f"BlockNeRF.depth is set but the scene {scene.name!r} has no depth maps for its train split")
        self.opt = self._optimizers(optimization, mlp, vis, n_codes)
        self.gradient_hook = None  # set by the harness (harness/run/gradients.py): sees each step's gradients
        self.data_parallel = None  # set by the harness when the trial runs on several processes (distributed.py)
        self.mixed = optimization.mixed_precision and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if self.mixed else None
        self.train_exposure = torch.as_tensor(tr.exposure if tr.exposure is not None else np.ones(len(tr)),
                                              dtype=torch.float32)
        self.train_app = torch.as_tensor(tr.appearance_id if tr.appearance_id is not None else np.zeros(len(tr)),
                                         dtype=torch.long)
        self.train_pose_group = torch.as_tensor(self.pose_group, dtype=torch.long)
        self.fit = {"steps": appearance.fit_steps, "lr": appearance.fit_lr, "rays": appearance.fit_rays}
        self.visibility_eval_stride = visibility.eval_stride if visibility is not None else None
        self.render_chunk = int(render_chunk)
        self.view = {"code": None, "exposure": 1.0}  # conditioning used by render()

    def _select_block(self, train: Split, test: Split) -> None:
        """The partition's blocks, this trial's block, and the training images and test views it holds."""
        self.blocks = self.partition.blocks(train.cameras.c2w[:, :, 3].astype(np.float64),
                                            self.scene.extras.get("blocks"))
        _check(0 <= self.block_index < len(self.blocks),
               f"block = {self.block_index} but the partition has {len(self.blocks)} blocks")
        self.block = self.blocks[self.block_index]
        self.train_index = self.partition.assign(self.blocks, train.cameras.c2w)[self.block_index]
        self.test_index = self.partition.assign(self.blocks, test.cameras.c2w)[self.block_index]
        _check(len(self.train_index) > 0, f"block {self.block_index} has no training images")
        _check(len(self.test_index) > 0, f"block {self.block_index} has no test views")

    def _perturbed_poses(self, noise: PoseNoise, groups: str) -> tuple[np.ndarray, dict]:
        """(the training poses with the known noise applied, the noise's record)."""
        # world units, or a fraction of this block's radius (a fixed amount keeps rows with other block
        # sizes, such as one block over the street, under the same noise)
        noise_t = noise.translation if noise.translation is not None else noise.translation_frac * self.block.radius
        # the known noise has the structure the offsets can represent: per image, or one draw per sequence
        noisy = (perturb_poses(self.true_c2w, noise.rotation_deg, noise_t, seed=1_000 + self.seed,
                               group=self.pose_group)
                 if (noise.rotation_deg > 0 or noise_t > 0) else self.true_c2w.copy())
        record = {"rotation_deg": noise.rotation_deg, "translation": float(noise_t), "groups": groups,
                  "n_groups": int(self.pose_group.max()) + 1}
        return noisy, record

    def _n_codes(self, appearance: Appearance, train: Split, test: Split, tr: Split) -> int:
        """How many appearance codes: one per appearance_id (training and test), per training image, or none."""
        if appearance.mode == "appearance_id":
            _check(train.appearance_id is not None, "Appearance.mode = 'appearance_id' but the scene has no "
                                                    "appearance_id (use Appearance.mode = 'image' or 'none')")
            ids = np.concatenate([train.appearance_id, test.appearance_id if test.appearance_id is not None else []])
            return int(ids.max()) + 1
        return len(tr) if appearance.mode == "image" else 0

    def _optimizers(self, opt: Optimization, mlp: MipMLP, vis: VisibilityMLP | None,
                    n_codes: int) -> ComponentOptimisers:
        comps = {"mlp": (mlp.parameters(), opt.lr_mlp),
                 "appearance": ([self.codes] if n_codes else [], opt.lr_appearance)}
        if vis is not None:
            comps["visibility"] = (vis.parameters(), opt.lr_visibility)
        if self.pose is not None:
            # rotation in radians, translation in world units: separate learning rates (None: lr_pose)
            comps["pose"] = ([self.pose.rotation], opt.lr_pose)
            comps["pose_translation"] = ([self.pose.translation],
                                         opt.lr_pose if opt.lr_pose_translation is None else opt.lr_pose_translation)
        return ComponentOptimisers(comps, opt.schedule, opt.optimizer, opt.clip_norm)

    def _pose_group(self, train: Split, groups: str) -> np.ndarray:
        """Pose group (0..G-1) of each of the block's training images."""
        if groups == "image":
            return np.arange(len(self.train_index))
        _check(train.sequence_id is not None, "pose_groups = 'sequence' but the scene has no per-frame sequence_id")
        return np.unique(train.sequence_id[self.train_index], return_inverse=True)[1].reshape(-1)

    # ---- conditioning -------------------------------------------------------------------------
    def code_for(self, image_index: torch.Tensor) -> torch.Tensor | None:
        if self.appearance_mode == "none":
            return None
        rows = image_index if self.appearance_mode == "image" else self.train_app[image_index]
        return self.codes[rows.to(self.device)]

    def default_code(self) -> torch.Tensor | None:
        return None if self.appearance_mode == "none" else self.codes.detach().mean(0)

    def exposure_in(self, exposure: torch.Tensor) -> torch.Tensor | None:
        return exposure_input(exposure.to(self.device), self.exposure_scale) if self.use_exposure else None

    def render_rays(self, origins, directions, code=None, exposure: float | torch.Tensor = 1.0, **kw) -> dict:
        """Field output for rays with one appearance code (A,) (or per ray (M, A)) and exposure."""
        m = origins.shape[0]
        if code is not None and code.dim() == 1:
            code = code[None].expand(m, -1)
        exp = torch.as_tensor(exposure, dtype=torch.float32, device=self.device).reshape(-1).expand(m)
        return self.field(origins.to(self.device), directions.to(self.device), code, self.exposure_in(exp), **kw)

    # ---- protocol -----------------------------------------------------------------------------
    def train_step(self, step: int, batch: dict) -> dict:
        self.field.train()
        idx = batch["image_index"].long()
        o, d = batch["origins"].to(self.device), batch["directions"].to(self.device)
        target = batch["rgb"].to(self.device)
        if self.pose is not None:
            o, d = self.pose.apply(o, d, self.train_pose_group[idx].to(self.device))
        gen = torch.Generator().manual_seed(self.seed * 7_919 + step)
        dp = self.data_parallel
        if dp is not None:  # this rank's rays of the global batch: draw as one process would, keep our rows
            gen = ShardedDraws(gen, dp.start, dp.stop, dp.total)
        with autocast(self.device, self.mixed):
            out = self.field(o, d, self.code_for(idx), self.exposure_in(self.train_exposure[idx]), generator=gen,
                             want_visibility=self.field.visibility is not None)
            fine, coarse = out["fine"], out["coarse"]
            mse_f = ((fine["rgb"].float() - target) ** 2).mean()
            mse_c = ((coarse["rgb"].float() - target) ** 2).mean()
            loss = mse_f + self.coarse_loss_weight * mse_c
            losses = {"mse": float(mse_f.detach()), "psnr_train": float(-10 * torch.log10(mse_f.detach()))}
            if "visibility" in fine:
                vis_loss = ((fine["visibility"].float() - fine["trans"].detach().float()) ** 2).mean()
                loss = loss + self.visibility_weight * vis_loss
                losses["visibility"] = float(vis_loss.detach())
            if self.depth_settings is not None and "depth" in batch:
                true = batch["depth"].to(self.device)
                unit = self.depth_settings.unit or self.far  # depth errors in units of the far distance by default
                term_f, stats = depth_loss(fine["weights"], fine["edges"], true, self.depth_settings, unit)
                term_c, _ = depth_loss(coarse["weights"], coarse["edges"], true, self.depth_settings, unit)
                loss = loss + self.depth_weight * (term_f + self.coarse_loss_weight * term_c)
                losses.update(depth=float(term_f.detach()), **stats)
            if self.pose is not None:
                reg = self.pose.regulariser(self.train_pose_group[idx].to(self.device), self.block.radius)
                loss = loss + self.pose.reg_weight(step) * reg
                losses["pose_reg"] = float(reg.detach())
        self.opt.zero_grad()
        hook = self.gradient_hook
        reduce = None
        if dp is None:
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            seen = None if hook is None else (lambda grads: hook(step, loss, grads, scaled=self.scaler is not None))
        else:  # every term is a mean over the rays: weighted by this rank's share, summed over the ranks
            objective, total = loss * dp.weight, [loss]
            (self.scaler.scale(objective) if self.scaler else objective).backward()

            def reduce(grads):  # before unscaling and clipping: the ranks' sum is the one-process gradient
                total[0] = dp.all_reduce_(grads, objective)

            seen = None if hook is None else (lambda grads: hook(step, total[0], grads, scaled=self.scaler is not None))
        grad = self.opt.step(step, self.scaler, before_update=seen, before_unscale=reduce)
        losses["loss"] = float(loss.detach())
        if grad:
            losses["grad_norm"] = grad
        return losses

    def render(self, origins: torch.Tensor, directions: torch.Tensor) -> dict:
        """Rays under the current view conditioning (`self.view`; mean code and exposure 1 by default)."""
        self.field.eval()
        outs = []
        code = self.view["code"] if self.view["code"] is not None else self.default_code()
        with torch.no_grad():
            for s in range(0, origins.shape[0], self.render_chunk):
                fine = self.render_rays(origins[s:s + self.render_chunk], directions[s:s + self.render_chunk], code,
                                        self.view["exposure"])["fine"]
                depth, acc = BlockField.depth_acc(fine)
                outs.append((fine["rgb"].float().cpu(), depth.cpu(), acc.cpu()))
        rgb, depth, acc = (torch.cat(x) for x in zip(*outs))
        return {"rgb": rgb.clamp(0, 1), "depth": depth, "acc": acc}

    def ray_samples(self, origins: torch.Tensor, directions: torch.Tensor, view=None) -> dict:
        """The coarse and fine samples render() composites (harness.core.method.SamplesProtocol), under
        `self.view`, or with view=(split, i) under that view's scored conditioning (view_condition)."""
        from baselines.block_nerf.inspect import ray_samples

        return ray_samples(self, origins, directions, view)

    # ---- view protocol (harness.core.method.ViewProtocol: the harness renders test views through it) --
    def view_condition(self, split: Split, i: int) -> tuple[torch.Tensor | None, float]:
        """(appearance code, exposure) for view i of `split` under the test protocol."""
        exposure = float(split.exposure[i]) if split.exposure is not None and self.use_exposure else 1.0
        if self.protocol == "none":
            return None, exposure
        if self.protocol == "appearance_id":
            return self.codes.detach()[int(split.appearance_id[i])], exposure
        cams, w, h = split.cameras, split.cameras.width, split.cameras.height
        pix = proto.half_pixels(w, h, "left")
        o, d = rays_for_pixels(cams, np.full(pix.shape, i), (pix % w).astype(np.float32) + 0.5,
                               (pix // w).astype(np.float32) + 0.5)
        target = torch.from_numpy(split.images[i].reshape(-1, 3)[pix])
        self.field.eval()
        with proto.frozen(self.field):
            code = proto.fit_code(lambda oo, dd, c: self.render_rays(oo, dd, c, exposure)["fine"]["rgb"],
                                  self.default_code(), o, d, target, self.fit["steps"], self.fit["lr"],
                                  self.fit["rays"], seed=self.seed * 31 + i)
        return code, exposure

    def render_view(self, split: Split, i: int) -> np.ndarray:
        """The scored part of view i (H, W or W/2, 3) float32 under the protocol."""
        code, exposure = self.view_condition(split, i)
        self.view = {"code": code, "exposure": exposure}
        try:
            o, d = image_rays(split.cameras, i)
            rgb = self.render(o, d)["rgb"].reshape(split.cameras.height, split.cameras.width, 3).numpy()
        finally:
            self.view = {"code": None, "exposure": 1.0}
        return self.scored_part(rgb)

    def scored_part(self, img: np.ndarray) -> np.ndarray:
        if self.protocol != "left_half":
            return img
        return img[:, proto.halves(img.shape[1])[1]]

    def evaluation_record(self, split: Split, full: bool) -> dict:
        """Stored with the scores (harness.core.method.ViewProtocol): the appearance protocol; after
        every test view (`full`), the block, its cameras and partition, the poses and visibility."""
        out = {"appearance_protocol": self.protocol_record(split)}
        if full:
            out["block"] = {**self.block.as_record(),
                            "cameras": [[float(x) for x in c] for c in self.true_c2w[:, :, 3]],
                            "n_blocks": len(self.blocks), "n_train_images": len(self.train_index),
                            "partition": [[round(float(x), 4) for x in b.center] for b in self.blocks],
                            "test_views": list(split.names)}
            out["pose"] = self.pose_record()
            vis = self.visibility_error(split)
            if vis is not None:
                out["visibility"] = vis
            depth = self.depth_record(split)
            if depth is not None:
                out["depth"] = depth
        return out

    def protocol_record(self, split: Split) -> dict:
        rec = {"name": self.protocol, "appearance": self.appearance_mode, "exposure_input": self.use_exposure}
        if self.protocol == "left_half":
            fit, score = proto.halves(split.cameras.width)
            rec.update(fit_columns=[fit.start, fit.stop], scored_columns=[score.start, score.stop],
                       fit_steps=self.fit["steps"], fit_lr=self.fit["lr"])
        return rec

    def pose_record(self) -> dict:
        """Errors of the training poses before and after refinement, raw and with the rigid gauge removed
        (the photometric loss cannot see a rigid motion of all cameras together with the scene)."""
        refined = self.pose.refined_c2w(self.noisy_c2w, self.pose_group) if self.pose else self.noisy_c2w
        rec = {"noise": self.pose_noise, "refinement": self.pose is not None}
        for name, errors in (("", pose_errors), ("_aligned", pose_errors_aligned)):
            rec["error_before" + name] = errors(self.noisy_c2w, self.true_c2w)
            rec["error_after" + name] = errors(refined, self.true_c2w)
        return rec

    def visibility_error(self, split: Split) -> dict | None:
        """|predicted visibility - true transmittance| over the fine samples of every
        `visibility_eval_stride`-th pixel of the test views, truth from the scene's depth maps
        (transmittance 1 before the first surface, 0 after it); also the density network's own error.
        `mae` averages over every ray (sky rays, whose truth is 1 everywhere, included); `mae_hit` only
        over rays whose first surface lies inside the block's region (|hit - centre| <= radius), i.e.
        the geometry this block models; `mae_hit_coarse` the same on the coarse samples (spread evenly
        in log distance instead of concentrated at the surface)."""
        depth = self.scene.extras.get("depth", {}).get("test")
        if self.field.visibility is None or depth is None:
            return None
        sums = {k: [0.0, 0] for k in ("all", "all_density", "hit", "hit_density", "hit_coarse")}

        def add(key, err):
            sums[key][0] += float(err.sum())
            sums[key][1] += int(err.numel())

        cams = split.cameras
        centre = torch.as_tensor(self.block.center, dtype=torch.float32, device=self.device)
        self.field.eval()
        with torch.no_grad():
            for k, i in enumerate(self.test_index):
                o, d = image_rays(cams, k)
                pick = torch.arange(0, o.shape[0], self.visibility_eval_stride, device="cpu")
                code, exposure = (self.default_code(), 1.0)
                out = self.render_rays(o[pick], d[pick], code, exposure, want_visibility=True)
                fine = out["fine"]
                true_depth = torch.from_numpy(depth[i].reshape(-1)[pick.numpy()]).to(self.device)
                truth = (fine["edges"][:, :-1] <= true_depth[:, None]).float()
                err, err_d = (fine["visibility"] - truth).abs(), (fine["trans"] - truth).abs()
                add("all", err)
                add("all_density", err_d)
                finite = torch.isfinite(true_depth)
                hit_pt = (o[pick].to(self.device)
                          + torch.where(finite, true_depth, 0.0)[:, None] * d[pick].to(self.device))
                hit = finite & ((hit_pt - centre).norm(dim=-1) <= self.block.radius)
                if hit.any():
                    add("hit", err[hit])
                    add("hit_density", err_d[hit])
                    coarse = self.render_rays(o[pick][hit.cpu()], d[pick][hit.cpu()], code, exposure,
                                              want_visibility=True, coarse_only=True)["coarse"]
                    truth_c = (coarse["edges"][:, :-1] <= true_depth[hit][:, None]).float()
                    add("hit_coarse", (coarse["visibility"] - truth_c).abs())

        def mean(key):
            total, n = sums[key]
            return total / n if n else None

        return {"mae": mean("all"), "density_transmittance_mae": mean("all_density"), "mae_hit": mean("hit"),
                "density_transmittance_mae_hit": mean("hit_density"), "mae_hit_coarse": mean("hit_coarse"),
                "hit_ray_fraction": sums["hit"][1] / max(1, sums["all"][1]),
                "pixel_stride": self.visibility_eval_stride}

    def depth_record(self, split: Split) -> dict | None:
        """Mean absolute error (metres) of the rendered depth (the expected termination over the opacity,
        as render() gives it) against the scene's depth on every DEPTH_EVAL_STRIDE-th pixel of the
        test views with a finite true depth that the split's masks keep (transient objects are not the
        static scene): `mae_m` over all of them, `mae_hit_m` over those whose surface lies in this
        block's region (the geometry it models)."""
        depth = self.trial_scene.extras.get("depth", {}).get("test")
        if depth is None:
            return None
        masks = split.masks
        errors: dict[str, list[torch.Tensor]] = {"all": [], "hit": []}
        centre = torch.as_tensor(self.block.center, dtype=torch.float32)
        self.field.eval()
        with torch.no_grad():
            for k in range(len(split)):
                o, d = image_rays(split.cameras, k)
                pick = torch.arange(0, o.shape[0], DEPTH_EVAL_STRIDE)
                true = torch.from_numpy(depth[k].reshape(-1)[pick.numpy()])
                keep = torch.isfinite(true) & (true > 0)
                if masks is not None:
                    keep &= torch.from_numpy(masks[k].reshape(-1)[pick.numpy()])
                if not keep.any():
                    continue
                fine = self.render_rays(o[pick][keep], d[pick][keep], self.default_code(), 1.0)["fine"]
                rendered = BlockField.depth_acc(fine)[0].float().cpu()
                err = (rendered - true[keep]).abs()
                hit = ((o[pick][keep] + true[keep][:, None] * d[pick][keep]) - centre).norm(dim=-1) <= self.block.radius
                errors["all"].append(err)
                errors["hit"].append(err[hit])
        merged = {k: torch.cat(v) if v else torch.zeros(0) for k, v in errors.items()}
        return {"mae_m": float(merged["all"].mean()) if len(merged["all"]) else None,
                "mae_hit_m": float(merged["hit"].mean()) if len(merged["hit"]) else None,
                "rays": int(len(merged["all"])), "pixel_stride": DEPTH_EVAL_STRIDE}

    def mean_visibility(self, origins: torch.Tensor, directions: torch.Tensor, weighted: bool = False,
                        region: bool = False) -> float:
        """Mean predicted visibility V(x, d) over the coarse samples of the given rays: low when the view
        looks through space the block's training cameras did not see. `weighted` averages with the
        block's rendering weights instead (about 0.5 for any opaque surface, so it hardly discriminates).
        `region` counts samples outside the block's region (|x - centre| > radius) as invisible, so a
        view that looks away from the block, or sees it only behind nearer geometry, scores low."""
        self.field.eval()
        with torch.no_grad():
            c = self.render_rays(origins, directions, self.default_code(), 1.0, want_visibility=True,
                                 coarse_only=True)["coarse"]
            v = c["visibility"]
            if region:
                e = c["edges"]
                mids = (e[:, 1:] + e[:, :-1]) / 2
                pts = origins.to(self.device)[:, None] + mids[..., None] * directions.to(self.device)[:, None]
                centre = torch.as_tensor(self.block.center, dtype=pts.dtype, device=pts.device)
                v = v * ((pts - centre).norm(dim=-1) <= self.block.radius).to(v.dtype)
            if not weighted:
                return float(v.mean().item())
            w = c["weights"]
            return float(((w * v).sum() / w.sum().clamp(min=1e-8)).item())

    # ---- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "field": self.field.state_dict(), "codes": self.codes.detach().cpu(),
                "pose": None if self.pose is None else self.pose.state_dict(), "opt": self.opt.state_dict(),
                "scaler": None if self.scaler is None else self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        _check(state.get("version") == STATE_VERSION, f"checkpoint version {state.get('version')} != {STATE_VERSION}")
        self.field.load_state_dict(state["field"])
        with torch.no_grad():
            self.codes.copy_(state["codes"].to(self.device))
        if self.pose is not None:
            self.pose.load_state_dict(state["pose"])
        self.opt.load_state_dict(state["opt"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def freeze(self, groups: frozenset[str]) -> None:
        """Do not train `groups` (a training stage's frozen components; their optimiser state is kept)."""
        self.opt.freeze(groups)

    def _block_depth(self, scene: Scene) -> dict:
        """The depth maps of this block's train and test images (the trial scene's splits), when the scene
        has depth: what depth supervision and the trainer's rays read."""
        depth = scene.extras.get("depth") or {}
        picked = {name: depth[name][index] for name, index in (("train", self.train_index), ("test", self.test_index))
                  if depth.get(name) is not None}
        return {"depth": picked} if picked else {}

    def parameter_groups(self) -> dict[str, list[torch.Tensor]]:
        """The trained tensors by optimiser component (mlp, appearance, visibility, pose...)."""
        return {k: list(ps) for k, ps in self.opt.params.items()}

    def telemetry(self) -> dict[str, float]:
        """Learning rate per component (mlp, appearance, visibility, pose) of the last step, and the
        block's facts: its index, training images and radius."""
        comm = {"comm/bytes": float(self.data_parallel.bytes_step)} if self.data_parallel is not None else {}
        return {**self.opt.telemetry(), **comm, "model/block": float(self.block_index),
                "model/train_images": float(len(self.train_index)), "model/block_radius": float(self.block.radius)}

    def stats(self) -> dict:
        vis = self.field.visibility
        return {"params_mlp": param_count(self.field.mlp), "params_visibility": 0 if vis is None else param_count(vis),
                "params_codes": int(self.codes.numel()),
                "params_pose": 0 if self.pose is None else param_count(self.pose),
                "block": self.block_index, "train_images": int(len(self.train_index)),
                "device": str(self.device), "mixed_precision": self.mixed}

    def memory_components(self) -> dict[str, int]:
        """Bytes of the persistent state by part ('memory' capability): the MLP, the visibility MLP, the
        appearance codes and pose offsets (when used), the optimisers' moments, and the gradients the last
        step left (cleared only by the next step)."""
        parts = {"mlp": self.field.mlp, "visibility": self.field.visibility, "appearance_codes": self.codes,
                 "pose": self.pose}
        out = {k: tensor_bytes(v) for k, v in parts.items() if v is not None}
        out["optimizer"] = tensor_bytes([o.state for o in self.opt.opts.values()])
        out["gradients"] = tensor_bytes([p.grad for ps in self.opt.params.values() for p in ps])
        return out
