"""Seam check of a composed Block-NeRF (docs/block_nerf.md, run 5).

On the test views that the composition blends from two or more blocks, compare the PSNR of the blend
with each of those blocks rendered alone (float renders; the compose record scores 8-bit PNGs). A
seam from blending would show as a blend worse than the block nearest the camera.

    python scripts/block_nerf_seam.py [EXP] [--bind B ...]

EXP defaults to block_nerf_ablation; the first group of at least two finished blocks is used (bind
`Sweep.zipped` to pick a row), with the experiment's own composition options.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import harness.registry  # noqa: F401  (registers methods and loaders)
from harness import config as cfg
from harness.compose import declared, groups, load_member
from harness.metrics import psnr
from harness.sweep import expand, read_spec

from baselines.block_nerf.compose import DEFAULTS, compose_view


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", nargs="?", default="block_nerf_ablation")
    ap.add_argument("--bind", action="append", default=[])
    ap.add_argument("--runs-dir", default="runs")
    args = ap.parse_args()
    torch.set_num_threads(1)
    exp_file = cfg.experiment_path(args.experiment)
    comp = declared(read_spec(exp_file, args.bind))
    members = next(m for m in groups(expand(args.experiment, args.bind), comp["over"]).values() if len(m) > 1)
    methods, scene = {}, None
    for t in members:
        methods[t.bindings[comp["over"]]], scene = load_member(exp_file, args.bind, t, Path(args.runs_dir))
    split = scene.split("test")
    opts = {**DEFAULTS, **(comp.get("options") or {}), "appearance_matching": False}
    blend, nearest, best = [], [], []
    for i in range(len(split)):
        img, info = compose_view(methods, split, i, opts, None)
        if len(info["blocks"]) < 2:
            continue
        alone = [psnr(np.clip(methods[k].render_view(split, i), 0, 1), split.images[i]) for k in info["blocks"]]
        blend.append(psnr(np.clip(img, 0, 1), split.images[i]))
        nearest.append(alone[0])  # blocks are listed nearest first
        best.append(max(alone))
        print(f"{split.names[i]}: blocks {info['blocks']} weights {np.round(info['weights'], 2).tolist()} "
              f"blend {blend[-1]:.2f} alone {np.round(alone, 2).tolist()}", flush=True)
    print(f"{len(blend)} blended views: blend {np.mean(blend):.2f} dB, nearest block alone {np.mean(nearest):.2f}, "
          f"best single block {np.mean(best):.2f}")


if __name__ == "__main__":
    main()
