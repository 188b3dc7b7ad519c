"""Data-parallel training of one trial over several processes (torch.distributed).

A trial launched with `launch.tasks_per_node` (x `launch.nodes`) > 1 runs as that many processes
(ranks). Each rank builds the same method from the same config and seed, draws the same global batch
(`RaySampler` is a pure function of (seed, step)) and trains on its contiguous slice of it
(`shard`); the method (capability `data_parallel`) weights its loss so that the sum of the ranks'
gradients is the one-process gradient of the global batch, and sums them across ranks
(`DataParallel.all_reduce_`) right before its update, so every rank applies the same update and
the parameters stay equal on every rank. Rank 0 alone writes (status, logs, checkpoints, metrics,
tracker) and evaluates; the other ranks follow (`FollowerRecord`: its writes do nothing) and wait
at barriers (resume, checkpoints). A rank that fails writes its error to `ranks/<rank>.error` in
the trial folder, which rank 0 records as the trial's error when its own collective fails.

World size 1 (the default) initialises nothing and changes nothing: no rank, no collective, the
method's `data_parallel` stays None.

The process group comes from the environment: `launch.run_trial_job` exports submitit's job
environment (`submitit.helpers.TorchDistributedEnvironment`) for a job of several tasks; a local
N-process launch (tests) sets RANK and WORLD_SIZE itself, with a file rendezvous (HARNESS_DIST_INIT). Backend: nccl
when CUDA is available, else gloo.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from harness.core.records import TrialRecord

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 600.0  # launch.collective_timeout_s: how long a collective waits for a silent rank
TIMEOUT_ENV = "HARNESS_COLLECTIVE_TIMEOUT_S"
# a rendezvous other than env:// (e.g. file:///tmp/x: no port that another process can take between the
# choice of a free port and rank 0's store binding it; the tests' N-process launches use one)
INIT_ENV = "HARNESS_DIST_INIT"
SIGNAL_BITS = 2  # harness.run.trial's PREEMPTED | STOPPED, agreed on in reduce_losses
ERRORS_DIR = "ranks"  # inside the trial folder: <rank>.error of a rank that failed


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def writer(self) -> bool:
        """Whether this process writes the trial's records (rank 0, or the only process)."""
        return self.rank == 0


_WORLD = World()


def world() -> World:
    """This process's place among the trial's processes (World() when it runs alone)."""
    return _WORLD


def backend_for(cuda: bool | None = None) -> str:
    """nccl on GPUs, gloo on the CPU."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    return "nccl" if cuda and torch.distributed.is_nccl_available() else "gloo"


def env_world_size(env=None) -> int:
    env = os.environ if env is None else env
    return int(env.get("WORLD_SIZE", "1") or 1)


def setup(timeout_s: float | None = None) -> World:
    """Join the trial's process group when WORLD_SIZE > 1 (env:// rendezvous: RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT; or the init method in HARNESS_DIST_INIT); else leave everything as it is.
    Idempotent."""
    global _WORLD
    size = env_world_size()
    if size <= 1:
        _WORLD = World()
        return _WORLD
    if timeout_s is None:
        timeout_s = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    backend = backend_for()
    if not torch.distributed.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(local % torch.cuda.device_count())
        torch.distributed.init_process_group(backend, init_method=os.environ.get(INIT_ENV) or "env://", rank=rank,
                                             world_size=size, timeout=datetime.timedelta(seconds=timeout_s))
    _WORLD = World(rank=rank, size=size, local_rank=local, backend=backend, timeout_s=float(timeout_s))
    log.info("rank %d of %d (%s, collective timeout %.0f s)", rank, size, backend, timeout_s)
    return _WORLD


LEAVE_TIMEOUT_S = 30.0  # how long a rank waits at the end for the others before it leaves the group


def teardown() -> None:
    """Leave the process group (at the end of the job; a cleanup that never raises). With gloo the ranks
    first wait for each other (at most LEAVE_TIMEOUT_S; at once past a rank that died): a rank that
    destroyed its group while another still held a connection to it sometimes ended in 'terminate called
    without an active exception' at exit, a failed task of a trial that was done."""
    global _WORLD
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if _WORLD.size > 1 and torch.distributed.get_backend() == "gloo":
            with contextlib.suppress(Exception):
                torch.distributed.monitored_barrier(timeout=datetime.timedelta(seconds=LEAVE_TIMEOUT_S),
                                                    wait_all_ranks=True)
        with contextlib.suppress(Exception):
            torch.distributed.destroy_process_group()
    _WORLD = World()


def barrier() -> None:
    if _WORLD.size > 1:
        torch.distributed.barrier()


def broadcast_flag(value: int) -> int:
    """Rank 0's `value` on every rank (an int)."""
    if _WORLD.size <= 1:
        return value
    t = torch.tensor([int(value)], dtype=torch.long, device=_comm_device())
    torch.distributed.broadcast(t, src=0)
    return int(t.item())


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if _WORLD.backend == "nccl" else torch.device("cpu")


# ---- the batch of a step ---------------------------------------------------------------------------
def shard(total: int, rank: int, size: int, unit: int = 1) -> tuple[int, int]:
    """[start, stop) of `rank`'s contiguous part of a global batch of `total` rays, in whole units of
    `unit` rays (p x p patches); the first (units % size) ranks take one unit more. A rank may get
    nothing when there are fewer units than ranks."""
    units = total // unit
    base, extra = divmod(units, size)
    start = rank * base + min(rank, extra)
    stop = start + base + (1 if rank < extra else 0)
    return start * unit, stop * unit


@dataclass
class DataParallel:
    """What a method with the `data_parallel` capability is given (its `data_parallel` attribute):
    its rank, the world size, the slice of the current step's global batch it trains on (`start`,
    `stop`, `total`, set by the runner before each train_step) and the collectives it needs.

    Loss weighting: a loss that is a mean over the step's rays is multiplied by `weight`
    ((stop - start) / total); a term every rank computes identically (a regulariser on drawn voxels)
    by 1 / size; then the sum over ranks of the gradients is the one-process gradient of the global
    batch's loss, whatever the slices' sizes."""

    rank: int
    size: int
    start: int = 0
    stop: int = 0
    total: int = 0
    bytes_step: int = 0  # bytes this rank sent into all-reduces during the last step (telemetry, figures)
    bytes_total: int = 0
    _counted: dict = field(default_factory=dict)

    @property
    def weight(self) -> float:
        return (self.stop - self.start) / self.total if self.total else 0.0

    def begin_step(self, start: int, stop: int, total: int) -> None:
        self.start, self.stop, self.total = start, stop, total
        self.bytes_step = 0

    def _count(self, t: torch.Tensor) -> None:
        n = t.numel() * t.element_size()
        self.bytes_step += n
        self.bytes_total += n

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """All-reduce (sum) in place; returns it."""
        self._count(tensor)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def max_(self, tensor: torch.Tensor) -> torch.Tensor:
        """All-reduce (max) in place; returns it."""
        self._count(tensor)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return tensor

    def all_reduce_(self, grads: dict[str, list], loss: torch.Tensor | None = None) -> torch.Tensor | None:
        """Sum the gradients {group: [tensors]} over the ranks, in place, in one flat all-reduce (the
        groups and lists in the same order on every rank; None entries are skipped). With `loss` (this
        rank's weighted loss), returns the sum over ranks: the global loss, the same on every rank."""
        tensors = [g for gs in grads.values() for g in gs if g is not None]
        parts = [g.reshape(-1).float() for g in tensors]
        if loss is not None:
            parts.append(loss.detach().reshape(1).float().to(parts[0].device if parts else loss.device))
        if not parts:
            return None
        flat = torch.cat(parts)
        self.sum_(flat)
        offset = 0
        for g in tensors:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n
        return flat[offset].to(loss.dtype) if loss is not None else None


def take(batch: dict[str, torch.Tensor], dp: DataParallel, unit: int = 1) -> dict[str, torch.Tensor]:
    """This rank's slice of a step's global batch; tells `dp` where it is."""
    total = int(next(iter(batch.values())).shape[0])
    start, stop = shard(total, dp.rank, dp.size, unit)
    dp.begin_step(start, stop, total)
    return {k: v[start:stop] for k, v in batch.items()}


def reduce_losses(losses: dict[str, float], dp: DataParallel, noted: int = 0) -> tuple[dict[str, float], int]:
    """The step's losses over the global batch: each rank's value weighted by its share of the rays,
    summed over ranks. Exact for means over rays and for terms equal on every rank; a method returns
    other terms scaled so that this sum is their global value (Plenoxels' sparsity, a mean over
    samples); a statistic left as it is (Block-NeRF's PSNR of the rank's rays) becomes the ray-weighted
    mean of the ranks'. Every rank gets the same numbers, so every rank takes the same divergence
    decision. In the same all-reduce, `noted` (bits of the signals this rank noted, harness.run.trial)
    becomes the bits any rank noted: what every rank then delivers after this step."""
    keys = sorted(losses)
    bits = [float(noted >> b & 1) for b in range(SIGNAL_BITS)]
    t = torch.tensor([float(losses[k]) * dp.weight for k in keys] + bits, dtype=torch.float64, device=_comm_device())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    values = t.tolist()
    agreed = sum(1 << b for b, v in enumerate(values[len(keys):]) if v > 0)
    return {k: float(v) for k, v in zip(keys, values)}, agreed


# ---- evaluation ------------------------------------------------------------------------------------
def gathered(render, indices) -> Iterator[tuple[int, object]]:
    """Views rendered by every rank and gathered on rank 0: in rounds of `size` views, rank r renders the
    round's r-th view (`render(index)`), and rank 0 yields (index, image) in the order of `indices`; the
    other ranks yield nothing, so they drive the rounds by exhausting the generator. One process: each
    view rendered and yielded in turn. Rank 0 scores and writes, as it does alone: the scores (and the
    per-view order of the record) are those of one process, only the rendering is shared."""
    indices = [int(i) for i in indices]
    if _WORLD.size <= 1:
        for i in indices:
            yield i, render(i)
        return
    for start in range(0, len(indices), _WORLD.size):
        batch = indices[start:start + _WORLD.size]
        mine = render(batch[_WORLD.rank]) if _WORLD.rank < len(batch) else None
        out: list | None = [None] * _WORLD.size if _WORLD.writer else None
        torch.distributed.gather_object(mine, out, dst=0)
        if out is not None:
            yield from zip(batch, out)


# ---- records ---------------------------------------------------------------------------------------
class FollowerRecord(TrialRecord):
    """A rank other than 0: reads the trial's folder like rank 0, writes nothing."""

    def set_state(self, state: str, **fields) -> dict:
        return {}

    def begin_attempt(self, **fields) -> dict:
        return {}

    def update(self, **fields) -> dict:
        return {}

    def write_metrics(self, metrics: dict) -> None:
        return None

    def write_progress(self, step: int, total: int, **fields) -> None:
        return None

    def append_log(self, entry: dict) -> None:
        return None

    def trim_log(self, last_step: int) -> None:
        return None


def write_rank_error(trial_dir: Path, rank: int, exc: BaseException, traceback: str = "") -> None:
    """A failing rank's error line, for rank 0 to record (best effort: never hides the error)."""
    error = f"{exc.__class__.__name__}: {exc}".splitlines()[0]
    with contextlib.suppress(OSError):
        folder = Path(trial_dir) / ERRORS_DIR
        folder.mkdir(exist_ok=True)
        tmp = folder / f".{rank}.error.tmp"
        tmp.write_text(json.dumps({"rank": rank, "error": error, "kind": exc.__class__.__name__,
                                   "collective": is_collective_error(exc),
                                   "traceback": traceback[-2000:]}))
        tmp.replace(folder / f"{rank}.error")


def clear_rank_errors(trial_dir: Path) -> None:
    folder = Path(trial_dir) / ERRORS_DIR
    for f in folder.glob("*.error") if folder.is_dir() else ():
        with contextlib.suppress(OSError):
            f.unlink()


def is_collective_error(exc: BaseException) -> bool:
    """Whether `exc` is a collective that failed (a peer died or timed out), not a rank's own error."""
    dist_error = getattr(torch.distributed, "DistError", None)
    if dist_error is not None and isinstance(exc, dist_error):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("gloo", "Gloo", "NCCL", "Connection closed by peer", "Connection reset", "timed out",
                            "Timed out", "ProcessGroup"))


def peer_error(trial_dir: Path, wait_s: float = 3.0) -> dict | None:
    """The error a failing rank wrote, its own error rather than a collective that failed because of
    another rank (lowest rank first), waiting up to `wait_s` for one: when a rank dies, the others'
    collectives fail at once, possibly before its file is there."""
    folder = Path(trial_dir) / ERRORS_DIR
    deadline = time.monotonic() + wait_s
    while True:
        found = []
        for f in sorted(folder.glob("*.error"), key=lambda p: int(p.stem)) if folder.is_dir() else []:
            with contextlib.suppress(OSError, ValueError):
                found.append(json.loads(f.read_text()))
        own = [e for e in found if not e.get("collective")]
        if own:
            return own[0]
        if time.monotonic() >= deadline:
            return found[0] if found else None
        time.sleep(0.1)
