"""Train Plenoxels on a Blender scene as a trial would and report time, rays/s and test PSNR.

    .venv/bin/python scripts/plenoxels_speed.py [--bind 'TVLoss.weight_density = 1e-4'] \
        [--iterations 2000] [--gin experiments/base/plenoxels.gin] [--threads 2]

The configuration comes from the Gin files (default: the base Plenoxels file) plus bindings;
--iterations rebinds its ITERATIONS macro. PSNR is harness.core.metrics.psnr on 8-bit-quantised
renders (as the harness scores saved PNGs), per test view, then the mean over views. Prints wall
and CPU seconds (CPU time is the better guide when other processes share the machine).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

from harness.core.data.blender import load_blender
from harness.core.data.rays import RaySampler, image_rays
from harness.core.metrics import psnr, to_8bit

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT / "data/nerf_synthetic/lego_100"
DEFAULT_GIN = ROOT / "experiments/base/plenoxels.gin"


def _sync(model) -> None:
    """Wait for queued GPU work, so wall-clock intervals cover it."""
    if getattr(model, "device", torch.device("cpu")).type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--iterations", type=int, default=None,
                    help="training steps (default: Trainer.iterations from the gin files)")
    ap.add_argument("--gin", action="append", default=None,
                    help=f"gin file(s) to parse (default: {DEFAULT_GIN})")
    ap.add_argument("--bind", action="append", default=[], help="gin binding, e.g. 'TVLoss.weight_sh=1e-3'")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--test-views", type=int, default=None, help="first N test views (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=50,
                    help="steps left out of the steady-state rays/s (kernel compiles, allocator warm-up)")
    args = ap.parse_args()
    args.gin = args.gin or [str(DEFAULT_GIN)]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)

    import harness.run.registry  # noqa: F401  (registers the configurables before parsing)
    from harness.run import config
    from harness.run.trial import Trainer

    if args.iterations:
        args.bind.append(f"ITERATIONS = {args.iterations}")
    config.parse([Path(p).resolve() for p in args.gin], args.bind)
    iterations = Trainer().iterations

    t0 = time.perf_counter()
    scene = load_blender(args.data, splits=("train", "test"))
    print(f"loaded {scene.name} in {time.perf_counter() - t0:.1f} s")
    train, test = scene.split("train"), scene.split("test")
    sampler = RaySampler(train.images, train.cameras, seed=args.seed)
    model = Trainer().method_cls(scene=scene, seed=args.seed)

    warm = min(args.warmup, iterations - 1)  # the first step of the steady state
    t0, c0 = time.perf_counter(), time.process_time()
    for step in range(iterations):
        if step == warm:
            _sync(model)
            t_warm = time.perf_counter()
        losses = model.train_step(step, sampler.sample(step, model.batch_size))
        if not math.isfinite(losses["loss"]):
            raise SystemExit(f"diverged at step {step}: {losses}")
        if args.log_every and (step % args.log_every == 0 or step == iterations - 1):
            el = time.perf_counter() - t0
            print(f"step {step:5d} {el:6.1f}s cpu {time.process_time() - c0:6.1f}s mse {losses['mse']:.5f} "
                  f"psnr~{-10 * math.log10(losses['mse']):.2f} samples/ray {losses['samples_per_ray']:.1f} "
                  f"voxels {model.stats()['voxels']:.0f}", flush=True)
    _sync(model)
    train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    steady_steps, steady_s = iterations - warm, time.perf_counter() - t_warm

    n_views = len(test) if args.test_views is None else min(args.test_views, len(test))
    scores = []
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n_views):
        o, d = image_rays(test.cameras, i)
        rgb = model.render(o, d)["rgb"].numpy().reshape(test.images[i].shape)
        scores.append(float(psnr(to_8bit(rgb), test.images[i])))
    render_s, render_cpu = time.perf_counter() - t0, time.process_time() - c0
    n_train_rays = iterations * model.batch_size
    n_test_rays = n_views * test.cameras.width * test.cameras.height
    print(f"iterations {iterations}  train {train_s:.1f} s  ({n_train_rays / train_s:,.0f} rays/s), "
          f"CPU {train_cpu:.1f} s")
    print(f"steady state (steps {warm}-{iterations - 1}): "
          f"{steady_steps * model.batch_size / steady_s:,.0f} rays/s on {model.device}, kernels {model.kernels!r}")
    print(f"render {n_views} views {render_s:.1f} s  ({n_test_rays / render_s:,.0f} rays/s), "
          f"CPU {render_cpu:.1f} s")
    print(f"trial total (train + render) {train_s + render_s:.1f} s")
    print(f"test PSNR {np.mean(scores):.3f} dB over {n_views} views (min {np.min(scores):.2f}, "
          f"max {np.max(scores):.2f})")
    print(f"stats {model.stats()}")
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
