"""Temporal Plenoxels (issue #29): one Plenoxels grid per time step of a dynamic scene, trained in time order,
each step's grid warm-started from the previous step's, with the design's temporal consistency losses.

Training is sequential: steps [0, first_steps) fit time step 0 (with the grid's whole coarse-to-fine
schedule), then every later time step k gets `steps_per_time_step` steps on its own training views (the
runner draws them through `train_images`, the 'time_steps' capability), starting from step k - 1's grid.
When step k starts, step k - 1's grid is kept (a snapshot that renders step k - 1's views from then on), the
learning-rate schedule restarts, and voxels within `revive_dilation` voxels of occupied ones get at least
`revive_density`: with a ReLU a voxel emptied at step k - 1 has no gradient, so an object could not move
into it (the revived density is far below visible, ~1e-3 opacity per sample at the defaults).

Temporal losses against the previous step's snapshot (baselines/plenoxels_temporal/losses.py):
- `FeatureTemporal`: the feature change of the voxels a batch touches that are occupied (raw density > 0)
  in either step: feature_temporal's means restricted to the touched rows, a stochastic estimate of the
  whole grid's (like the grid regularisers, which use drawn voxels).
- `FlowConsistency`: `flow_rays` pixels q of step k - 1's training frames with a valid forward flow f(q):
  the ray through q + f(q) in the same camera at step k, rendered with the grid being trained, must match
  the snapshot's render of q (the frame t + 1 warped back onto frame t, exactly along the ray instead of by
  bilinear resampling of rendered pixels). source='scene': the dataset's flow; 'depth': flow_from_depth of
  the snapshot's rendered depth and the two cameras (static points only).

The grid is not pruned (Plenoxels.prune_by = 'none' is required): pruning after step 0's views would free the
space the objects move into later. Needs Plenoxels.occupancy_threshold below revive_density.
"""

from __future__ import annotations

import contextlib
import logging

import gin
import numpy as np
import torch
import torch.nn.functional as F

from baselines.plenoxels.method import Plenoxels
from baselines.plenoxels.sampling import Occupancy
from baselines.plenoxels_temporal.losses import (
    FeatureTemporal,
    FlowConsistency,
    flow_from_depth,
    occupied_mean_square,
)
from harness.core.data.rays import image_rays, rays_for_pixels
from harness.core.errors import ConfigError
from harness.core.method import tensor_bytes

log = logging.getLogger(__name__)

STATE_VERSION = 1


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(f"TemporalPlenoxels: {msg}")


def _termination(rendered: dict) -> torch.Tensor:
    """Distance along the ray where it ends (M,): the expected depth over the opacity (the composite's depth is
    sum w t, which shrinks with the opacity), +inf where the ray stays (almost) empty: nothing hit."""
    acc = rendered["acc"]
    return torch.where(acc > 0.5, rendered["depth"] / acc.clamp(min=1e-6), torch.inf)


@gin.configurable
class TemporalPlenoxels:
    """See the module docstring. `grid`: the Plenoxels class each time step's grid is (`TemporalPlenoxels.grid =
    @Plenoxels`, configured by `Plenoxels.*` bindings; the reference makes those bindings part of the trial)."""

    capabilities = ("device", "telemetry", "memory", "views", "time_steps")  # harness.core.method.CAPABILITIES
    positive_settings = ("first_steps", "steps_per_time_step")

    def __init__(self, scene, seed: int, *, grid=None, first_steps: int = 1500, steps_per_time_step: int = 300,
                 revive_density: float = 0.05, revive_dilation: int = 2,
                 feature_temporal: FeatureTemporal | None = None, flow_consistency: FlowConsistency | None = None,
                 flow_rays: int = 1024):
        train = scene.split("train")
        _require(train.time_step is not None, f"scene '{scene.name}' has no time steps (a static scene): "
                 "use Plenoxels, or a dynamic scene (docs/data.md 'Dynamic scenes')")
        _require(first_steps > 0 and steps_per_time_step > 0,
                 f"first_steps and steps_per_time_step must be > 0, got {first_steps} and {steps_per_time_step}")
        _require(revive_density > 0 and revive_dilation >= 0,
                 f"revive_density must be > 0 and revive_dilation >= 0, got {revive_density} and {revive_dilation}")
        _require(flow_rays > 0, f"flow_rays must be > 0, got {flow_rays}")
        self.model = (grid or Plenoxels)(scene=scene, seed=seed)
        _require(isinstance(self.model, Plenoxels), f"grid must be @Plenoxels, got {grid!r}")
        m = self.model
        _require(m.prune_by == "none", f"Plenoxels.prune_by must be 'none', got {m.prune_by!r} (pruning after time "
                 "step 0's views frees the space objects move into later)")
        _require(m.occupancy_threshold < revive_density,
                 f"Plenoxels.occupancy_threshold ({m.occupancy_threshold}) must be below revive_density "
                 f"({revive_density}), or revived voxels are skipped")
        _require(all(s < first_steps for s in m.upsample_steps),
                 f"Plenoxels.upsample_steps {m.upsample_steps} must all be before first_steps ({first_steps}): "
                 "every time step's grid has the same voxels")
        _require(m.patch_size == 1, "patch losses (Reconstruction.patch_size > 1) are not supported")
        self.seed = int(seed)
        self.first_steps, self.steps_per_time_step = int(first_steps), int(steps_per_time_step)
        self.revive_density, self.revive_dilation = float(revive_density), int(revive_dilation)
        self.feature_temporal, self.flow_consistency = feature_temporal, flow_consistency
        self.flow_rays = int(flow_rays)
        self.time_step = np.asarray(train.time_step)
        self.n_steps = int(self.time_step.max()) + 1
        self.views_at = [np.flatnonzero(self.time_step == k) for k in range(self.n_steps)]
        self.train, self.device = train, m.device
        self.flows = scene.extras.get("flow", {}).get("train")
        if self._uses_flow() and flow_consistency.source == "scene":
            _require(self.flows is not None, f"FlowConsistency(source='scene') needs the scene's flow, and scene "
                     f"'{scene.name}' has none for 'train' (load_scene.load_flow off, or a downscale > 1?)")
        if self._uses_flow():
            _require(train.camera_id is not None, "FlowConsistency needs each frame's camera_id")
        self.total_steps = self.first_steps + (self.n_steps - 1) * self.steps_per_time_step
        self.segment = 0  # the time step being trained
        self.frames: list[dict] = []  # snapshots of the finished time steps: density, sh, occupancy
        self._flow_cache: dict | None = None  # the flow targets of the current segment (rebuilt after a resume)
        self._flow_batch: torch.Tensor | None = None  # this step's flow targets, for losses()
        m.auxiliary = self

    # ---- the time schedule -----------------------------------------------------------------
    def segment_of(self, step: int) -> int:
        """The time step trained at (0-based) training step `step`."""
        k = 0 if step < self.first_steps else 1 + (step - self.first_steps) // self.steps_per_time_step
        if k >= self.n_steps:
            raise ValueError(f"TemporalPlenoxels: step {step} is past the last time step's steps: "
                             f"Trainer.iterations must be {self.total_steps}")
        return k

    def start_of(self, k: int) -> int:
        return 0 if k == 0 else self.first_steps + (k - 1) * self.steps_per_time_step

    def train_images(self, step: int) -> np.ndarray:
        """The training views of the time step trained at `step` ('time_steps' capability)."""
        return self.views_at[self.segment_of(step)]

    @property
    def batch_size(self) -> int:
        return self.model.batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:  # the runner lowers it after an out-of-memory
        self.model.batch_size = int(value)

    def _advance(self) -> None:
        """Finish time step `segment`: keep its grid, start the next one from it."""
        g = self.model.grid
        self._clear()
        self.model.refresh_occupancy()
        self.frames.append({"density": g.density.detach().clone(), "sh": g.sh.detach().clone(),
                            "occupancy": self.model.occupancy})
        self.segment += 1
        self._revive()
        self.model.schedule_origin = self.start_of(self.segment)
        self.model.refresh_occupancy(self.start_of(self.segment))
        self._flow_cache = None
        log.info("time step %d of %d starts at step %d", self.segment, self.n_steps, self.start_of(self.segment))

    @torch.no_grad()
    def _clear(self) -> None:
        """Raw densities in (0, revive_density] to 0 at the end of a time step: revived voxels no ray pushed
        down (inside objects, behind surfaces) would otherwise stay occupied, be dilated again at the next
        step, and grow without bound (each is ~1e-3 opacity per sample: invisible, but sampled)."""
        d = self.model.grid.density[:, 0]
        d[(d > 0) & (d <= self.revive_density)] = 0.0

    @torch.no_grad()
    def _revive(self) -> None:
        """Voxels within revive_dilation of occupied ones get raw density >= revive_density (see the module)."""
        g = self.model.grid
        occupied = (g.density_volume() > 0).float()[None, None]
        if self.revive_dilation > 0:
            k = 2 * self.revive_dilation + 1
            occupied = F.max_pool3d(occupied, k, stride=1, padding=self.revive_dilation)
        near = occupied.view(-1)[g.voxels] > 0
        g.density[near, 0] = g.density[near, 0].clamp(min=self.revive_density)

    # ---- training ----------------------------------------------------------------------------
    def train_step(self, step: int, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        k = self.segment_of(step)
        if k < self.segment:
            raise ValueError(f"TemporalPlenoxels: step {step} belongs to time step {k}, already finished")
        while self.segment < k:
            self._advance()
        out = self.model.train_step(step, batch)
        out["time_step"] = float(k)
        return out

    def _uses_flow(self) -> bool:
        return self.flow_consistency is not None and self.flow_consistency.active

    def rays(self, step: int):
        """Plenoxels' auxiliary rays: this step's flow-consistency rays (None at time step 0 or without the term)."""
        self._flow_batch = None
        if not self._uses_flow() or self.segment == 0:
            return None
        cache = self._flow_targets()
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(step) + 500_000_029)
        pick = torch.randint(0, cache["target"].shape[0], (self.flow_rays,), generator=gen)
        self._flow_batch = cache["target"][pick].to(self.device)
        return cache["origins"][pick], cache["directions"][pick]

    def losses(self, step: int, rgb_extra, density, d_rows, sh, s_rows) -> dict[str, torch.Tensor]:
        """Plenoxels' auxiliary losses: the temporal terms against the previous time step's grid."""
        if self.segment == 0:
            return {}
        out: dict[str, torch.Tensor] = {}
        prev = self.frames[-1]
        term = self.feature_temporal
        if term is not None and term.active:
            def either(rows):  # occupied at the previous step or now, for the touched rows only
                return (prev["density"][rows, 0] > 0) | (self.model.grid.density[rows, 0] > 0)

            value = term.density_weight * occupied_mean_square(density, prev["density"][d_rows], either(d_rows)) \
                + term.sh_weight * occupied_mean_square(sh, prev["sh"][s_rows], either(s_rows))
            out["feature_temporal"] = term.weight * value
        if self._flow_batch is not None:
            out["flow_consistency"] = self.flow_consistency.weight * (rgb_extra - self._flow_batch).square().mean()
        return out

    @torch.no_grad()
    def _flow_targets(self) -> dict:
        """For the current time step k: every valid (frame of step k - 1, pixel q) with its ray through q + f(q)
        in the same camera at step k and the snapshot's colour at q."""
        if self._flow_cache is not None:
            return self._flow_cache
        k, split = self.segment, self.train
        cams = split.cameras
        at_k = {int(split.camera_id[i]): int(i) for i in self.views_at[k]}
        w, h = cams.width, cams.height
        origins, directions, targets = [], [], []
        with self._at(k - 1):
            for i in self.views_at[k - 1]:
                j = at_k.get(int(split.camera_id[i]))
                if j is None:  # this camera has no frame at step k
                    continue
                o, d = image_rays(cams, int(i))
                r = self.model.render(o, d)
                flow = self._flow(int(i), j, _termination(r).reshape(h, w))
                v, u = np.mgrid[0:h, 0:w].reshape(2, -1).astype(np.float32) + 0.5
                u2, v2 = u + flow[:, 0], v + flow[:, 1]
                ok = np.isfinite(flow).all(1) & (u2 >= 0) & (u2 <= w) & (v2 >= 0) & (v2 <= h)
                if not ok.any():
                    continue
                o2, d2 = rays_for_pixels(cams, np.full(int(ok.sum()), j), u2[ok], v2[ok])
                origins.append(o2)
                directions.append(d2)
                targets.append(r["rgb"][torch.from_numpy(ok)])
        if not targets:
            raise ValueError(f"TemporalPlenoxels: no valid flow from time step {k - 1} to {k} in any training camera")
        self._flow_cache = {"origins": torch.cat(origins), "directions": torch.cat(directions),
                            "target": torch.cat(targets)}
        return self._flow_cache

    def _flow(self, i: int, j: int, depth: torch.Tensor) -> np.ndarray:
        """(H*W, 2) forward flow of train frame i (to frame j, the same camera one step later)."""
        if self.flow_consistency.source == "scene":
            return np.asarray(self.flows[i], dtype=np.float32).reshape(-1, 2)
        cams = self.train.cameras
        K = (float(cams.fx[i]), float(cams.fy[i]), float(cams.cx[i]), float(cams.cy[i]))
        flow = flow_from_depth(depth.double(), K, torch.from_numpy(cams.c2w[i]).double(),
                               torch.from_numpy(cams.c2w[j]).double())
        return flow.reshape(-1, 2).float().numpy()

    # ---- rendering ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _at(self, k: int):
        """The grid of time step k in place while rendering (the current one for steps not finished)."""
        if k >= len(self.frames):
            yield
            return
        g, m = self.model.grid, self.model
        kept = (g.density, g.sh, m.occupancy)
        g.density, g.sh, m.occupancy = self.frames[k]["density"], self.frames[k]["sh"], self.frames[k]["occupancy"]
        try:
            yield
        finally:
            g.density, g.sh, m.occupancy = kept

    def render(self, origins: torch.Tensor, directions: torch.Tensor) -> dict[str, torch.Tensor]:
        """The grid being trained (the latest time step)."""
        return self.model.render(origins, directions)

    @torch.no_grad()
    def render_view(self, split, i: int) -> np.ndarray:
        """View i at its own time step ('views' capability): (H, W, 3) float32 in [0, 1]."""
        if split.time_step is None:
            raise ValueError("TemporalPlenoxels: the split has no time steps")
        origins, dirs = image_rays(split.cameras, int(i))
        chunk = self.model.render_chunk
        with self._at(int(split.time_step[i])):
            rgb = torch.cat([self.model.render(origins[s:s + chunk], dirs[s:s + chunk])["rgb"]
                             for s in range(0, origins.shape[0], chunk)])
        h, w = split.cameras.height, split.cameras.width
        return rgb.clamp(0, 1).reshape(h, w, 3).numpy().astype(np.float32)

    def scored_part(self, image: np.ndarray) -> np.ndarray:
        return image  # whole views are scored

    def evaluation_record(self, split, full: bool) -> dict:
        return {"temporal_training": {
            "scheme": "sequential: one grid per time step, warm-started from the previous step's",
            "time_steps": self.n_steps, "time_steps_trained": self.segment + 1, "first_steps": self.first_steps,
            "steps_per_time_step": self.steps_per_time_step,
            "feature_temporal": None if self.feature_temporal is None else vars(self.feature_temporal),
            "flow_consistency": None if self.flow_consistency is None else vars(self.flow_consistency)}}

    # ---- state and facts ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        frames = [{"density": f["density"].clone(), "sh": f["sh"].clone(),
                   "occupancy": f["occupancy"].state_dict()} for f in self.frames]
        return {"version": STATE_VERSION, "model": self.model.state_dict(), "segment": self.segment,
                "frames": frames}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"TemporalPlenoxels: state version {state.get('version')!r} is not {STATE_VERSION}; "
                             "the checkpoint is from another code version")
        self.model.load_state_dict(state["model"])
        dev = self.device
        self.frames = [{"density": f["density"].to(dev).clone(), "sh": f["sh"].to(dev).clone(),
                        "occupancy": Occupancy.from_state(f["occupancy"], dev)} for f in state["frames"]]
        self.segment = int(state["segment"])
        self.model.schedule_origin = self.start_of(self.segment)
        self._flow_cache = None

    def stats(self) -> dict[str, float]:
        out = self.model.stats()
        out.update({"time_steps": float(self.n_steps), "time_steps_trained": float(self.segment + 1),
                    "snapshot_bytes": float(tensor_bytes([(f["density"], f["sh"]) for f in self.frames]))})
        return out

    def telemetry(self) -> dict[str, float]:
        out = self.model.telemetry()
        if out:
            out["model/time_step"] = float(self.segment)
        return out

    def memory_components(self) -> dict[str, int]:
        out = self.model.memory_components()
        out["snapshots"] = tensor_bytes([(f["density"], f["sh"], f["occupancy"].fine, f["occupancy"].coarse)
                                         for f in self.frames])
        return out
