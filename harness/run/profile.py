"""`harness profile EXP`: memory and time of a training step, and of rendering a view, per batch size.

The experiment's first trial (expanded as the sweep does, its Gin parsed as its job would) is built on
its scene, once per batch size, each in a fresh process (so no batch size inherits another's memory
and a run out of memory is that row's outcome, not a crash): `warmup` steps, `steps` timed steps (the
median is the step time), one training step measured for memory (harness/run/memory.py), then the first
view of the validation split rendered as the evaluation renders it (measured for time and memory). The
model starts as built (step 0), or with `trained` from the trial's latest checkpoint under `runs_dir`
(its trained size: a coarse-to-fine grid is largest at the end). Batches come from the trial's
RaySampler as in training. Nothing is written: a profile is not a trial.
"""

from __future__ import annotations

import json
import logging
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from harness.core.errors import ConfigError, HarnessError

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZES = (1024, 4096, 16384)
ROW_PREFIX = "PROFILE_ROW "  # the worker's result line on stdout (its logs go to stderr)


def parse_batch_sizes(text: str) -> list[int]:
    """'1024,4096,16384' -> [1024, 4096, 16384]; a ConfigError line for anything else."""
    try:
        sizes = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(s <= 0 for s in sizes):
        raise ConfigError(f"--batch-sizes {text!r}: expected positive integers, comma-separated (e.g. 1024,4096)")
    return sizes


def profile(experiment: str, batch_sizes=DEFAULT_BATCH_SIZES, steps: int = 5, warmup: int = 2,
            bindings=(), runs_dir: Path | str = "runs", trained: bool = False, timeout: float | None = None) -> dict:
    """{'experiment', 'trial' (id), 'label', 'rows': one per batch size (see measure), ...}."""
    from harness.run.config import experiment_name, experiment_path
    from harness.run.sweep import expand

    if steps < 1 or warmup < 0:
        raise ConfigError(f"--steps {steps} / --warmup {warmup}: expected steps >= 1 and warmup >= 0")
    trial = expand(experiment, list(bindings), require_data=True)[0]
    checkpoint = None
    if trained:
        checkpoint = Path(runs_dir) / experiment_name(experiment) / trial.id / "checkpoints"
        if not any(checkpoint.glob("step_*.pt")):
            raise HarnessError(f"{checkpoint}: no checkpoint of trial {trial.id} ({trial.label}); run the sweep "
                               f"first, or profile the model as built (without --trained)")
    job = {"experiment": str(experiment_path(experiment)), "bindings": list(bindings), "lines": trial.gin_bindings,
           "steps": int(steps), "warmup": int(warmup), "checkpoint": None if checkpoint is None else str(checkpoint)}
    rows = [_in_fresh_process({**job, "batch_size": int(b)}, timeout) for b in batch_sizes]
    return {"experiment": experiment_name(experiment), "trial": trial.id, "label": trial.label, "steps": steps,
            "warmup": warmup, "trained": trained, "rows": rows}


def _in_fresh_process(job: dict, timeout: float | None) -> dict:
    row = {"batch_size": job["batch_size"]}
    try:
        proc = subprocess.run([sys.executable, "-m", "harness.run.profile", json.dumps(job)], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**row, "error": f"took longer than {timeout:g} s (--timeout)"}
    for line in proc.stdout.splitlines():
        if line.startswith(ROW_PREFIX):
            return json.loads(line[len(ROW_PREFIX):])
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        oom = " (out of memory? the kernel's OOM killer sends SIGKILL)" if proc.returncode == -signal.SIGKILL else ""
        return {**row, "error": f"killed by {name}{oom}", "out_of_memory": proc.returncode == -signal.SIGKILL}
    tail = [t for t in proc.stderr.strip().splitlines() if t.strip()]
    return {**row, "error": f"exit {proc.returncode}: {tail[-1] if tail else 'no output'}"}


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


def measure(job: dict) -> dict:
    """One batch size, in this process (Gin is parsed here): {'batch_size', 'device', 'step_ms' (median of
    the timed steps), 'rays_per_s', 'train_step' (memory.step_record of one step), 'render' (the view's
    memory figures, 'view', 'rays', 'seconds'), 'components' ({part: bytes} or None), 'start_step'}; with
    'error' (and 'out_of_memory') instead of figures when the batch did not run."""
    import torch

    from harness.core.data.rays import RaySampler
    from harness.core.method import has as has_capability
    from harness.run import checkpoints, memory
    from harness.run.evaluation import Evaluation
    from harness.run.sweep import trial_config
    from harness.run.trial import Trainer, device_name, validation_split

    trial_config(Path(job["experiment"]), job["bindings"], job["lines"])
    trainer = Trainer()
    scene, method = trainer.build()
    start = 0
    if job.get("checkpoint"):
        found = checkpoints.load_latest(Path(job["checkpoint"]))
        if found is None:
            raise HarnessError(f"{job['checkpoint']}: no checkpoint that verifies")
        start = found[0]
        method.load_state_dict(found[1]["method"])
    device = memory.compute_device(method)
    bs = method.batch_size = int(job["batch_size"])
    row: dict = {"batch_size": bs, "device": device_name(device), "method": type(method).__name__,
                 "scene": scene.name, "start_step": start}
    split = scene.split("train")
    sampler = RaySampler(split.images, split.cameras, trainer.seed)
    patch = method.patch_size if has_capability(method, "patches") else 1
    step = start
    try:
        for _ in range(job["warmup"]):
            method.train_step(step, sampler.sample(step, bs, patch))
            step += 1
        times = []
        for _ in range(job["steps"]):
            batch = sampler.sample(step, bs, patch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            method.train_step(step, batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
            step += 1
        _, row["train_step"] = memory.measure_step(method, step, sampler.sample(step, bs, patch), device)
        row["step_ms"] = round(1000 * statistics.median(times), 2)
        row["rays_per_s"] = round(bs / statistics.median(times))
        views = scene.split(validation_split(scene) or "train")
        with memory.measure(device) as peak:
            name = next(iter(Evaluation().views(method, views, [0])))[0]
        row["render"] = {"view": name, "rays": int(views.cameras.width * views.cameras.height), **peak.record()}
    except Exception as exc:
        if not _is_out_of_memory(exc):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return {**row, "error": f"out of memory at step {step}: {first}"[:300], "out_of_memory": True}
    row["components"] = memory.components(method)
    return row


# ---- the table ----------------------------------------------------------------------------------------
COLUMNS = ("batch", "step ms", "rays/s", "step peak MB", "step growth MB", "activations MB", "render peak MB",
           "render growth MB", "render s")


def _fmt(value, spec: str = ",.1f") -> str:
    return "-" if value is None else format(value, spec)


def table(result: dict) -> str:
    """The profile as text: a heading (trial, method, scene, device, how memory was measured), one row per
    batch size, and the method's persistent parts."""
    rows = result["rows"]
    ok = [r for r in rows if "error" not in r]
    head = (f"{result['experiment']}: trial {result['trial']} ({result['label']})"
            + (f", {ok[0]['method']} on {ok[0]['scene']}, {ok[0]['device']}" if ok else ""))
    start = ok[0]["start_step"] if ok else 0
    lines = [head, f"{result['warmup']} warm-up + {result['steps']} timed steps (median) from step {start}"
             + (" (the trial's latest checkpoint)" if result.get("trained") else " (the model as built)")
             + ", then 1 step and 1 view measured for memory, each batch size in a fresh process"]
    cells: list[tuple[str, ...]] = [COLUMNS]
    for r in rows:
        if "error" in r:
            cells.append((str(r["batch_size"]), r["error"]))
            continue
        step, render = r.get("train_step", {}), r.get("render", {})
        cells.append((str(r["batch_size"]), _fmt(r["step_ms"]), _fmt(r["rays_per_s"], ",.0f"),
                      _fmt(step.get("peak_mb")), _fmt(step.get("growth_mb")), _fmt(step.get("transient_mb")),
                      _fmt(render.get("peak_mb")), _fmt(render.get("growth_mb")), _fmt(render.get("seconds"), ".2f")))
    widths = [max(len(c[i]) for c in cells if len(c) == len(COLUMNS)) for i in range(len(COLUMNS))]
    for c in cells:
        if len(c) == len(COLUMNS):
            lines.append("  ".join(x.rjust(w) for x, w in zip(c, widths)))
        else:
            lines.append(f"{c[0].rjust(widths[0])}  {c[1]}")
    notes = {r["train_step"].get("note") for r in ok if r.get("train_step", {}).get("note")}
    lines += [f"memory not measured: {n}" for n in sorted(notes)]
    measured = next((r["train_step"]["measured"] for r in ok if "train_step" in r), None)
    if measured == "rss":
        lines += ["peak: the process's peak RSS during the call (torch, the scene and the model included); growth: "
                  "what the call added", "to what was resident before it; activations: the step's growth less what "
                  "the method's persistent parts grew by"]
    elif measured == "cuda":
        lines.append("peak: torch.cuda.max_memory_allocated during the call; growth: over what was allocated "
                     "before it; activations: the growth less what the method's persistent parts grew by")
    with_parts = [r for r in ok if r.get("components")]
    same = all(r["components"] == with_parts[0]["components"] for r in with_parts)
    for r in with_parts[-1:] if same else with_parts:
        comps = r["components"]
        lines.append("persistent parts after the steps" + ("" if same else f" of batch {r['batch_size']}")
                     + " (MB): " + ", ".join(f"{k} {v / 2**20:,.1f}" for k, v in comps.items())
                     + f"; total {sum(comps.values()) / 2**20:,.1f}")
    if ok and not with_parts:
        lines.append(f"persistent parts: {ok[0]['method']} does not declare the 'memory' capability")
    fits = [r["batch_size"] for r in ok]
    if fits:
        lines.append(f"largest batch that ran: {max(fits)}")
    return "\n".join(lines)


def failed(result: dict) -> list[dict]:
    """Rows that failed for another reason than memory (a bug, a timeout): the command exits 1 on them."""
    return [r for r in result["rows"] if "error" in r and not r.get("out_of_memory")]


def _worker(argv: list[str]) -> int:
    """`python -m harness.run.profile JOB_JSON`: one batch size; prints its row as one JSON line."""
    import harness.run.registry  # noqa: F401  (this process's entry point: register the configurables)

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    row = measure(json.loads(argv[0]))
    print(ROW_PREFIX + json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
