"""`python -m harness ...`: the command line the Makefile targets call."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
from pathlib import Path

from harness.core.errors import HarnessError
from harness.core.paths import DATA_DIR, DEFAULT_RUNS_DIR

log = logging.getLogger("harness")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR, help="where trial records live (default: runs/)")
    p.add_argument("--bind", action="append", default=[], metavar="BINDING",
                   help="extra Gin binding, e.g. --bind 'TVLoss.weight_density=1e-4' (repeatable)")


def cmd_sweep(args) -> int:
    from harness.run import sweep as sw

    if args.dry_run and _search_dry_run(args):
        return 0
    if args.dry_run:
        trials = sw.expand(args.experiment, args.bind, require_data=False)
        missing = sorted({str(t.identity["data"]["missing"]) for t in trials
                          if "missing" in t.identity.get("data", {})})
        if missing:
            log.warning("scene data not found (%s): the ids shown are provisional until it is there",
                        ", ".join(missing))
        if args.json:
            print(json.dumps([{"id": t.id, "bindings": t.bindings} for t in trials], indent=2))
        else:
            for t in trials:
                print(f"{t.id}  {t.label}")
        return 0
    from harness.run.driver import run_sweep

    outcome = run_sweep(args.experiment, args.bind, args.runs_dir,
                        {"cluster": args.cluster, "parallel": args.parallel, "threads": args.threads,
                         "retry_failed": args.retry_failed or None, "stale": args.stale})
    from harness.run.launch import QUEUED_EARLIER, SUBMITTED

    submitted = {k for k, v in outcome.items() if v.startswith(SUBMITTED)}
    queued = {k for k, v in outcome.items() if v.startswith(QUEUED_EARLIER)}
    bad = {k: v for k, v in outcome.items()  # a search's pruned trials are results, not failures
           if v != "done" and not v.startswith("pruned") and k not in submitted | queued}
    done = len(outcome) - len(bad) - len(submitted) - len(queued)
    print(f"{args.experiment}: {done} of {len(outcome)} trials done"
          + (f", {len(submitted)} submitted to SLURM" if submitted else "")
          + (f", {len(queued)} already queued on SLURM by an earlier sweep" if queued else "")
          + (" (follow with make status)" if submitted or queued else "")
          + ("" if not bad else "; not done: " + "; ".join(f"{k}: {v}" for k, v in bad.items())))
    from harness.run.config import experiment_name

    name = experiment_name(args.experiment)
    # every trial done: run the experiment's compose step, if it declares one
    if not bad and not submitted and not queued:
        from harness.run.composition import compose_if_declared

        for where, what in compose_if_declared(args.experiment, args.bind, args.runs_dir).items():
            print(f"compose {where}: {what}")
    print(f"records: {Path(args.runs_dir) / name}   report: make report EXP={name}")
    return 0 if not bad else 1


def _search_dry_run(args) -> bool:
    """`--dry-run` of an experiment with Sweep.search: its cells, studies, trials told and left."""
    from harness.run.config import experiment_path
    from harness.run.sweep import read_spec

    spec = read_spec(experiment_path(args.experiment), list(args.bind))
    if spec.get("search") is None:
        return False
    from harness.run.search import describe

    info = describe(args.experiment, args.bind, spec, args.runs_dir)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return True
    print(info["search"])
    for c in info["cells"]:
        states = ", ".join(f"{n} {s}" for s, n in sorted(c["states"].items())) or "none asked yet"
        best = f"; best {c['best']['value']:.4f} at {c['best']['params']}" if c["best"] else ""
        print(f"cell {c['cell']}: study {c['study']}: {states}; {c['left']} left to ask{best}")
    return True


def cmd_compose(args) -> int:
    from harness.run.composition import compose_experiment

    outcome = compose_experiment(args.experiment, args.bind, args.runs_dir)
    for where, what in outcome.items():
        print(f"{where}: {what}")
    return 0 if all(not v.startswith("waiting") for v in outcome.values()) else 1


def _records(runs_dir: Path, exp: str) -> list:
    from harness.core.records import TrialRecord

    return [TrialRecord(p.parent) for p in sorted((Path(runs_dir) / exp).glob("*/status.json"))]


def cmd_status(args) -> int:
    from harness.core.staleness import find_stale
    from harness.run import slurm
    from reports.collect import collect_trials

    for exp in args.experiment.split(","):
        jobs, note = {}, ""
        records = _records(args.runs_dir, exp)
        if any(slurm.job_id_of(r) for r in records):  # merge squeue/sacct; mark jobs that died unrecorded
            try:
                jobs = slurm.reconcile(records)
            except slurm.SlurmError as exc:
                note = f" (SLURM not queried: {exc})"
        df = collect_trials(Path(args.runs_dir), exp)
        counts = df["state"].value_counts().to_dict() if len(df) else {}
        stale = find_stale(records)
        note += (f"; {len(stale)} done trials are stale (computed by other code than this checkout's: "
                 f"`make sweep ARGS='--stale rerun'` recomputes them)" if stale else "")
        print(f"{exp}: {len(df)} trials: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + note)
        if not len(df):
            continue
        df["stale"] = [stale.get(i, "") for i in df["id"]]
        if jobs or "slurm_job_id" in df and df["slurm_job_id"].notna().any():
            info = [jobs.get(i) for i in df["id"]]
            df["job"] = df["slurm_job_id"]
            df["slurm"] = [j.state if j else None for j in info]
            df["elapsed"] = [j.elapsed if j else None for j in info]
            df["node"] = [(j.node or None) if j else None for j in info]
        cols = [c for c in ("id", "state", "label", "progress", "psnr", "attempts", "job", "slurm", "elapsed",
                            "node", "stale", "error") if c in df.columns and (c != "stale" or stale)]
        print(df[cols].to_string(index=False, na_rep="-", max_colwidth=60))
        failed = [(r, s) for r in records if (s := r.status()).get("state") in ("failed", "diverged", "collapsed")]
        for r, status in failed[:10]:
            print(f"\n--- {r.dir.name} {status['state']}: {status.get('error')}")
            print(_log_tail(status))
        if len(failed) > 10:
            print(f"\n({len(failed) - 10} more failed trials: their logs are named in their status.json)")
    return 0


def _log_tail(status: dict, lines: int = 8) -> str:
    """The end of a trial's job log (SLURM/submitit stderr), else its recorded traceback."""
    path = status.get("log_stderr")
    if path and Path(path).is_file():
        text = Path(path).read_text(errors="replace").rstrip().splitlines()[-lines:]
        return f"    (tail of {path})\n" + "\n".join("    " + t for t in text)
    if status.get("traceback"):
        return "\n".join("    " + t for t in status["traceback"].rstrip().splitlines()[-lines:])
    return "    (no log)"


def cmd_cancel(args) -> int:
    from harness.run import slurm

    for exp in args.experiment.split(","):
        records = _records(args.runs_dir, exp)
        if not records:
            raise HarnessError(f"{Path(args.runs_dir) / exp}: no trial records (wrong EXP or --runs-dir?)")
        open_ = [r for r in records if r.state in slurm.OPEN_RECORD_STATES]
        arrays = slurm.cancel([j for r in open_ if (j := slurm.job_id_of(r))])
        marked = slurm.mark_cancelled(open_, arrays)
        left = [r.dir.name for r in open_ if r.state in slurm.OPEN_RECORD_STATES]
        print(f"{exp}: cancelled SLURM array(s) {', '.join(arrays) or '(none)'}; {marked} trials marked "
              f"cancelled; {len(records) - marked - len(left)} finished before"
              + (f"; still open (no SLURM job, or its process still runs): {', '.join(left)}" if left else ""))
    return 0


def cmd_reproduce(args) -> int:
    from harness.run.reproduce import reproduce
    from harness.run.settings import launch

    settings = launch(cluster=args.cluster, threads=args.threads)
    result = reproduce(args.runs_dir, args.experiment, args.trial_id, settings, out=args.out)
    print(f"reproduced {args.experiment}/{args.trial_id} in {result['dir']}")
    for what in ("metrics", "parameters"):
        lines = result[what]
        print(f"{what}: " + ("identical" + (" (bit for bit)" if what == "parameters" else " (every digit)")
                             if not lines else f"{len(lines)} differences"))
        for line in lines[:20]:
            print(f"  {line}")
    env = result["environment"]
    print("machine and code: " + ("as recorded" if not env else "differences that can change the numbers:"))
    for line in env:
        print(f"  {line}")
    return 0 if not result["metrics"] and not result["parameters"] else 1


def cmd_inspect(args) -> int:
    from harness.run.inspect import run_inspect

    for line in run_inspect(args.trial, args.ray, worst=args.worst, view=args.view, checkpoint=args.checkpoint,
                            out=args.out, runs_dir=args.runs_dir):
        print(line)
    return 0


def cmd_report(args) -> int:
    from reports.build import build_report

    views = [v.strip() for v in args.views.split(",") if v.strip()] if args.views else None
    bench_paths = None if args.bench is None else [Path(p) for p in args.bench.split(",") if p.strip()]
    try:
        out = build_report([e.strip() for e in args.experiment.split(",") if e.strip()], Path(args.runs_dir),
                           out_dir=args.out, embed=args.embed, baseline=args.baseline, views=views,
                           bench_paths=bench_paths)
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT):
            raise
        raise HarnessError(f"cannot write the report to {exc.filename or args.out}: {exc.strerror}; write it "
                           "elsewhere with --out DIR (make report ARGS='--out DIR')") from None
    print(f"report: {out}")
    return 0


def cmd_tensorboard(args) -> int:
    from harness.run.board import serve

    serve(args.runs_dir, [e.strip() for e in args.experiment.split(",") if e.strip()], port=args.port,
          host=args.host)
    return 0


def quiet_gin_search_logs() -> None:
    """gin logs every include-path probe on the root logger ('Path not found: ...'), which
    reads like an error to users; keep those out, keep everything else."""

    def keep(record: logging.LogRecord) -> bool:
        return not ("/gin/" in record.pathname.replace("\\", "/") and record.levelno <= logging.ERROR)

    for handler in logging.getLogger().handlers:
        handler.addFilter(keep)


def cmd_evaluate(args) -> int:
    from harness.core.metrics import evaluate_dirs
    from harness.core.records import atomic_write_json

    metrics = tuple(m.strip() for m in args.metrics.split(","))
    result = evaluate_dirs(args.pred_dir, args.gt_dir, lpips_net=args.lpips_net, metrics=metrics,
                           background=tuple(args.background), weights_dir=args.lpips_weights)
    means = ", ".join(f"{m} {result[m]:.4f}" for m in metrics if m in result)
    print(f"{len(result['per_view'])} views: {means}")
    if args.json:
        atomic_write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


def cmd_scene(args) -> int:
    from harness.scene_cli import check_scene, make_scene

    if args.action == "make":
        out = make_scene(args.target, args.out, args.bind)
        print(f"wrote {out}")
        print(check_scene(out))
    else:
        print(check_scene(Path(args.target), args.format))
    return 0


def cmd_doctor(args) -> int:
    """Data checks on a scene folder (or procedural scene) or on every scene an experiment's sweep uses."""
    from harness.core.data import doctor

    if _is_experiment(args.target):
        from harness.run.config import experiment_path
        from harness.run.scene_checks import check_trials
        from harness.run.sweep import expand

        trials = expand(args.target, args.bind, require_data=True)
        checks = [(c.target, c.description, c.findings, c.load_s, c.check_s)
                  for c in check_trials(experiment_path(args.target), args.bind, trials)]
    else:
        from harness.core.data.procedural import KINDS

        if not Path(args.target).exists() and args.target not in KINDS:
            raise HarnessError(f"{args.target}: not a scene folder, a procedural scene ({', '.join(sorted(KINDS))}) "
                               f"or an experiment (experiments/*.gin)")
        checks = [_doctor_folder(Path(args.target), args.format)]
    findings = []
    for target, description, found, load_s, check_s in checks:
        timing = f"loaded in {load_s:.2f} s, checked in {check_s:.2f} s"
        print(f"{target}: {description or 'not loaded'} ({timing})")
        for f in found:
            print(f"  {f.line()}")
        findings += found
    print(doctor.summary(findings))
    return 2 if any(f.severity == "error" for f in findings) else 0


def _is_experiment(target: str) -> bool:
    """An experiment name or .gin file (else a scene folder or a procedural scene's name)."""
    from harness.core.paths import EXPERIMENTS_DIR

    if target.endswith(".gin"):
        return True
    return not Path(target).exists() and (EXPERIMENTS_DIR / f"{target}.gin").is_file()


def _doctor_folder(path: Path, format: str | None) -> tuple:
    import time

    from harness.core.data import doctor
    from harness.core.data.formats import load_folder

    t0 = time.perf_counter()
    scene, findings = doctor.try_load(lambda: load_folder(path, format), str(path))
    t1 = time.perf_counter()
    if scene is not None:
        findings += doctor.diagnose(scene, Path(scene.path))
    return str(path), doctor.describe(scene) if scene else "", findings, t1 - t0, time.perf_counter() - t1


def cmd_profile(args) -> int:
    """Memory and time of a training step and of a view render per batch size (harness/run/profile.py)."""
    from harness.run import profile

    result = profile.profile(args.experiment, profile.parse_batch_sizes(args.batch_sizes), steps=args.steps,
                             warmup=args.warmup, bindings=args.bind, runs_dir=args.runs_dir, trained=args.trained,
                             timeout=args.timeout)
    print(json.dumps(result, indent=2) if args.json else profile.table(result))
    return 1 if profile.failed(result) else 0


def cmd_data(args) -> int:
    from harness.core.data.fetch import link_shared
    from harness.core.data.manifest import MANIFEST_PATH, get_entry, install, list_lines, load_manifest

    data_dir = args.data_dir
    if args.list or args.download:
        manifest = load_manifest(args.manifest or MANIFEST_PATH)
    if args.list:
        print("\n".join(list_lines(manifest, data_dir)))
        return 0
    if args.download:
        if args.mirror and len(args.download) > 1:
            raise HarnessError("--mirror names one file's URL: use it with a single --download NAME")
        for entry in [get_entry(manifest, name) for name in args.download]:
            for path, outcome in install(entry, data_dir, mirror=args.mirror, keep_archive=args.keep_archive).items():
                print(f"data/{path}: {outcome}")
        return 0
    if args.mirror or args.keep_archive:
        raise HarnessError("--mirror and --keep-archive go with --download NAME")
    linked = link_shared(data_dir)
    for name, result in linked.items():
        print(f"data/{name}: {result}")
    if all(r.startswith("not found") for r in linked.values()):
        print("no shared copies here; with network, download the public datasets: "
              "python -m harness data --list, then python -m harness data --download NAME")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sweep", help="expand an experiment into trials and run those not done")
    p.add_argument("experiment", help="name of experiments/<name>.gin (or a path to a .gin file)")
    _add_common(p)
    p.add_argument("--dry-run", action="store_true", help="list the trials without running them")
    p.add_argument("--json", action="store_true", help="with --dry-run: print the trials as a JSON list")
    p.add_argument("--cluster", choices=("local", "debug", "slurm"), help="override launch.cluster")
    p.add_argument("--parallel", type=int, help="override launch.parallel (local: trials at once)")
    p.add_argument("--threads", type=int, help="torch threads per trial (default: cores / parallel)")
    p.add_argument("--retry-failed", action="store_true",
                   help="also re-run failed, diverged, collapsed and cancelled trials")
    p.add_argument("--stale", choices=("report", "rerun", "ignore"),
                   help="done trials computed by other code than this checkout's: keep and mark them (report, the "
                        "default; override of launch.stale), recompute them (rerun), or say nothing (ignore)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("compose", help="evaluate finished trials together (e.g. Block-NeRF blocks), as the "
                                       "experiment's Sweep.compose declares; runs after `sweep` by itself")
    p.add_argument("experiment", help="name of experiments/<name>.gin (or a path to a .gin file)")
    _add_common(p)
    p.set_defaults(func=cmd_compose)

    p = sub.add_parser("status", help="counts and a table of an experiment's trials by state "
                                      "(with SLURM job state, elapsed time and node; log tails of failed trials)")
    p.add_argument("experiment", help="experiment name(s), comma-separated")
    _add_common(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("cancel", help="cancel an experiment's SLURM jobs and mark its unfinished trials cancelled")
    p.add_argument("experiment", help="experiment name(s), comma-separated")
    _add_common(p)
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("reproduce", help="re-run a done trial from its record into a scratch folder and compare "
                                         "metrics (every digit) and final parameters (bit for bit)")
    p.add_argument("experiment", help="experiment name (its folder under --runs-dir)")
    p.add_argument("trial_id")
    _add_common(p)
    p.add_argument("--cluster", choices=("local", "debug", "slurm"), default="local", help="where to run it")
    p.add_argument("--threads", type=int, help="torch threads if the record names none")
    p.add_argument("--out", type=Path, help="scratch folder (default: <runs-dir>/<exp>/.reproduce/<id>-<time>)")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("inspect", help="a trained trial's samples along single rays (density, colour, "
                                       "weights per sample): CSV, plot and a summary line per ray")
    p.add_argument("trial", help="a trial folder, or EXP/ID (an id prefix will do) under --runs-dir")
    p.add_argument("--ray", action="append", default=[], metavar="VIEW:X,Y",
                   help="test view (index or name) and pixel (column,row), e.g. 0:50,40 (repeatable)")
    p.add_argument("--worst", type=int, default=0, metavar="N",
                   help="also the N pixels of --view with the largest squared RGB error")
    p.add_argument("--view", help="with --worst: the test view (index or name; default 0)")
    p.add_argument("--checkpoint", choices=("best", "latest"),
                   help="which state (default: the best if the trial saved one, else the latest)")
    p.add_argument("--out", type=Path, help="output folder (default: <runs-dir>/<exp>/.inspect/<id>)")
    p.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR, help="where trial records live (default: runs/)")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("report", help="build the HTML report of one or more experiments")
    p.add_argument("experiment", help="experiment name(s), comma-separated")
    _add_common(p)
    p.add_argument("--out", type=Path, help="output folder (default: <runs-dir>/<exp>/report)")
    p.add_argument("--embed", action="store_true", help="one self-contained HTML file (images as data URIs)")
    p.add_argument("--baseline", help="variant the others are compared with (label or a unique part of it; "
                                      "default: the first)")
    p.add_argument("--views", help="test views for the image grids: names or positions, comma-separated "
                                   "(default: 3 spread over the test split)")
    p.add_argument("--bench", help="pytest-benchmark JSON file(s), comma-separated (default: bench.json in the "
                                   "project root when present; '' for none)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("evaluate", help="score renders against ground truth (files paired by name)")
    p.add_argument("pred_dir", type=Path)
    p.add_argument("gt_dir", type=Path)
    p.add_argument("--json", type=Path, help="write psnr/ssim/lpips, per_view and protocol to this file")
    p.add_argument("--lpips-net", choices=("vgg", "alex"), default="vgg")
    p.add_argument("--metrics", default="psnr,ssim,lpips", help="comma-separated subset of psnr,ssim,lpips")
    p.add_argument("--background", type=float, nargs=3, default=(1.0, 1.0, 1.0),
                   help="colour RGBA images are composited on (default white)")
    p.add_argument("--lpips-weights", type=Path, help="folder with the LPIPS backbone weights")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("scene", help="make a procedural scene, or check any scene folder")
    p.add_argument("action", choices=("make", "check"))
    p.add_argument("target", help="make: tiny|street|dynamic; check: a scene folder")
    p.add_argument("--out", type=Path, help="make: output folder (default: the project's scene cache)")
    p.add_argument("--format", help="check: the format, if not detected")
    p.add_argument("--bind", action="append", default=[], metavar="BINDING",
                   help="make: Gin binding for the generator (repeatable)")
    p.set_defaults(func=cmd_scene)

    p = sub.add_parser("doctor", help="check a scene's data before training (poses, intrinsics, rays, image values, "
                                      "duplicates, train/test leaks, exposure/appearance, time steps and flow); "
                                      "exit 2 on errors")
    p.add_argument("target", help="a scene folder, a procedural scene (tiny|street|dynamic), or an experiment "
                                  "(every scene its sweep uses)")
    p.add_argument("--format", help="scene folder: the format, if not detected")
    p.add_argument("--bind", action="append", default=[], metavar="BINDING",
                   help="experiment: extra Gin binding (repeatable)")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("profile", help="peak memory and time of a training step and of rendering a view, per batch "
                                       "size, for the experiment's first trial (each in a fresh process; writes "
                                       "nothing)")
    p.add_argument("experiment", help="name of experiments/<name>.gin (or a path to a .gin file)")
    _add_common(p)
    p.add_argument("--batch-sizes", default="1024,4096,16384", help="rays per step, comma-separated "
                                                                    "(default: 1024,4096,16384)")
    p.add_argument("--steps", type=int, default=5, help="timed training steps per batch size (default: 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before them (default: 2)")
    p.add_argument("--trained", action="store_true",
                   help="start from the trial's latest checkpoint under --runs-dir (its trained size), "
                        "not from the model as built")
    p.add_argument("--timeout", type=float, help="seconds per batch size before its row says so (default: none)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON instead of the table")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("tensorboard", help="serve TensorBoard over experiments' trials (runs named by their "
                                           "swept bindings); prints the URL")
    p.add_argument("experiment", help="experiment name(s), comma-separated")
    p.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR, help="where trial records live (default: runs/)")
    p.add_argument("--port", type=int, default=6006, help="port (default: 6006)")
    p.add_argument("--host", default="localhost", help="interface to listen on (default: localhost only)")
    p.set_defaults(func=cmd_tensorboard)

    p = sub.add_parser("data", help="link the team's shared datasets into data/ (default), or list/download the "
                                    "public ones (harness/core/data/datasets.toml)")
    p.add_argument("--list", action="store_true", help="show every dataset and its state (present/linked/missing)")
    p.add_argument("--download", nargs="+", metavar="NAME", help="download, verify and unpack these manifest entries")
    p.add_argument("--mirror", metavar="URL", help="with --download NAME: try this URL first")
    p.add_argument("--keep-archive", action="store_true", help="keep the zip in data/downloads/ after unpacking")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR, help="where datasets go (default: the project's data/)")
    p.add_argument("--manifest", type=Path,
                   help="a dataset manifest of your own (default: harness/core/data/datasets.toml)")
    p.set_defaults(func=cmd_data)
    return parser


# the commands that parse experiments (the others read records, images or the data manifest)
GIN_COMMANDS = (cmd_sweep, cmd_compose, cmd_reproduce, cmd_scene, cmd_doctor, cmd_inspect, cmd_profile)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    quiet_gin_search_logs()
    try:
        if args.func in GIN_COMMANDS:
            import harness.run.registry  # noqa: F401  (registers the configurables; imports torch)
        return args.func(args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished trials are kept; re-run the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`harness status | head`): no message, as a shell tool
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit
        return 141
    except OSError as exc:  # the file system refused (read-only, full, permissions): one line, not a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        code = errno.errorcode.get(exc.errno) if exc.errno is not None else None
        print(f"error: {where}{exc.strerror or exc}" + (f" ({code})" if code else ""), file=sys.stderr)
        return 2
