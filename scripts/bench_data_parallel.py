"""Data-parallel figures (docs/benchmarks.md, "Data parallel"): training steps per second of one trial
on 1 and 2 processes, and the bytes each rank all-reduces per step.

    .venv/bin/python scripts/bench_data_parallel.py block_nerf --steps 30 --warmup 3
    .venv/bin/python scripts/bench_data_parallel.py plenoxels --steps 20 --warmup 2

For each configuration (processes x torch threads per process) it builds the experiment's first trial
as the runner does (`Trainer.build`), and runs warm-up and timed training steps the way the runner does
with several ranks (`distributed.take`, the method's all-reduce, `distributed.reduce_losses`), without
records or evaluation. Prints one JSON line per configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EXPERIMENTS = {
    # the default block config (experiments/base/block_nerf.gin) on the street, block 0
    "block_nerf": "include 'base/block_nerf.gin'\ninclude 'base/scenes/street.gin'\n",
    # the default Plenoxels config on lego 100 (128^3 final, starting at 32^3)
    "plenoxels": "include 'base/plenoxels.gin'\ninclude 'base/scenes/lego_100.gin'\n",
}


def _worker(rank: int, world: int, port: int, name: str, threads: int, steps: int, warmup: int, out: str) -> None:
    if world > 1:
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    import harness.run.registry  # noqa: F401
    from harness.core.data.rays import RaySampler
    from harness.core.method import has
    from harness.run import distributed, sweep
    from harness.run.trial import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        exp = Path(tmp) / f"{name}.gin"
        exp.write_text(EXPERIMENTS[name] + "Sweep.seeds = [0]\nlaunch.cluster = 'debug'\n")
        trial = sweep.expand(str(exp))[0]
        sweep.trial_config(exp, [], trial.gin_bindings)
    world_info = distributed.setup(600)
    trainer = Trainer()
    scene, method = trainer.build()
    split = scene.split("train")
    sampler = RaySampler(split.images, split.cameras, trainer.seed)
    dp = None
    if world_info.size > 1:
        dp = method.data_parallel = distributed.DataParallel(world_info.rank, world_info.size)
    patch = method.patch_size if has(method, "patches") else 1
    times, sent = [], []
    for step in range(warmup + steps):
        distributed.barrier()
        t0 = time.perf_counter()
        batch = sampler.sample(step, method.batch_size, patch)
        if dp is None:
            method.train_step(step, batch)
        else:
            distributed.reduce_losses(method.train_step(step, distributed.take(batch, dp, patch * patch)), dp)
        if step >= warmup:
            times.append(time.perf_counter() - t0)
            sent.append(dp.bytes_step if dp is not None else 0)
    if world_info.writer:
        touched = getattr(method, "comm", {}).get("comm/touched_rows_bytes")
        Path(out).write_text(json.dumps({
            "method": name, "processes": world_info.size, "threads_per_process": threads,
            "batch": method.batch_size, "steps": steps, "median_step_s": sorted(times)[len(times) // 2],
            "steps_per_s": len(times) / sum(times), "allreduce_bytes_per_step": sum(sent) / len(sent),
            "touched_rows_bytes_last_step": touched,
            "machine": f"{os.cpu_count()} CPUs, torch {torch.__version__}"}))
    distributed.teardown()


def run(name: str, world: int, threads: int, steps: int, warmup: int) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        mp.start_processes(_worker, args=(world, port, name, threads, steps, warmup, str(out)), nprocs=world,
                           start_method="spawn")
        return json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("method", choices=sorted(EXPERIMENTS))
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--configs", default="1x1,1x2,2x1", help="processes x threads per process, comma-separated")
    args = p.parse_args()
    os.chdir(ROOT)
    for config in args.configs.split(","):
        world, threads = (int(x) for x in config.split("x"))
        print(json.dumps(run(args.method, world, threads, args.steps, args.warmup)), flush=True)


if __name__ == "__main__":
    main()
