"""Seam check of a composed Block-NeRF (docs/block_nerf.md; baselines/block_nerf/seam.py).

    python scripts/block_nerf_seam.py [EXP] [--bind B ...] [--novel N] [--novel-seed S] [--out FILE]

Every composition group of EXP (default block_nerf_ablation) whose block trials are finished is
composed with the experiment's `full` composition options (appearance matching off), and its PSNR is
compared between views in the overlap of two block regions and views inside one region. Views are
classed by the group's own partition (a one-block group, the control that blends nothing, by the first
multi-block group's). On views blended from two or more blocks, the blend is compared with each block
alone. Two multi-block groups with different partitions (block_nerf_seam: `BlockPartition.shift` 0 and
0.5) give the paired check: views in one partition's overlap and the other's interior are scored as
overlap and as interior views, so the seam is measured without the views' own difficulty.

Views: the scene's test views, or with `--novel N` N novel views of the procedural street drawn like
its own cameras from `--novel-seed` (exact ground truth from the generator; 25 test views leave 8 in
the overlaps, too few to separate a seam from the views' own difficulty). Bind `Sweep.zipped` to pick
rows. The result is printed and written as JSON to `--out` (default runs/EXP/compose/seam[_novel].json).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm.auto import tqdm

import harness.run.registry  # noqa: F401  (registers methods and loaders)
from baselines.block_nerf.compose import score_composed
from baselines.block_nerf.seam import paired_seam
from harness.core.errors import HarnessError
from harness.core.records import TrialRecord, atomic_write_json
from harness.run import config as cfg
from harness.run.composition import declared, groups, load_member
from harness.run.sweep import expand, read_spec


def load_groups(experiment: str, binds: list[str], runs_dir: Path) -> tuple[dict, dict, object]:
    """({group label: {block: method}}, composition spec, scene) for every group whose trials are all done."""
    exp_file = cfg.experiment_path(experiment)
    comp = declared(read_spec(exp_file, binds))
    if comp is None:
        raise SystemExit(f"{exp_file}: no Sweep.compose declared")
    out, scene = {}, None
    for key, members in groups(expand(experiment, binds), comp["over"]).items():
        if any(TrialRecord(runs_dir / t.experiment / t.id).state != "done" for t in members):
            print(f"skipping {key}: not every block trial is done", file=sys.stderr)
            continue
        methods = {}
        for t in members:
            methods[t.bindings[comp["over"]]], scene = load_member(exp_file, binds, t, runs_dir)
        out[key] = methods
    if not out:
        raise SystemExit(f"{experiment}: no composition group with all its block trials done in {runs_dir}")
    return out, comp, scene


def novel_split(n: int, seed: int):
    """N novel views of the procedural street under the Gin bindings now parsed (a member's config)."""
    from harness.core.data.procedural import scene_params
    from harness.core.data.procedural.street import street_views
    from harness.core.data.procedural.views import render_split

    return render_split(street_views(scene_params("street"), n, seed))


def _f(value) -> str:
    """2 decimals, or '-' where a set of views was empty."""
    return "-" if value is None else f"{value:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", nargs="?", default="block_nerf_ablation")
    ap.add_argument("--bind", action="append", default=[])
    ap.add_argument("--runs-dir", default="runs", type=Path)
    ap.add_argument("--novel", type=int, default=0, help="score N novel street views instead of the test views")
    ap.add_argument("--novel-seed", type=int, default=12345)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    try:
        found, comp, scene = load_groups(args.experiment, args.bind, args.runs_dir)
        split = novel_split(args.novel, args.novel_seed) if args.novel else scene.split("test")
    except HarnessError as exc:
        raise SystemExit(f"error: {exc}") from None
    opts = comp.get("options") or {}
    partitions = {key: [m[k].block for k in sorted(m)] for key, m in found.items() if len(m) > 1}
    control = next(iter(partitions.values()), None)  # classes the views of one-block groups
    result = {"experiment": args.experiment, "views": "novel" if args.novel else "test", "n_views": len(split),
              "novel_seed": args.novel_seed if args.novel else None, "options": opts, "groups": {}, "paired": []}
    for key, methods in found.items():
        print(f"{key}: {len(methods)} block(s), {len(split)} views", flush=True)
        with tqdm(total=len(split), desc="views", unit="view", leave=False) as bar:
            res = score_composed(methods, split, opts, partitions.get(key, control), alone=len(methods) > 1,
                                 progress=lambda done, total: bar.update(done - bar.n))
        result["groups"][key] = res
        line = (f"  all {_f(res['psnr'])} dB; overlap ({res['n_overlap']}) {_f(res['psnr_overlap'])}, interior "
                f"({res['n_interior']}) {_f(res['psnr_interior'])}, gap {_f(res['gap'])}")
        if "blended" in res:
            b = res["blended"]
            line += (f"; {b['n']} blended views: blend {_f(b['blend'])}, nearest block alone "
                     f"{_f(b['nearest_alone'])}, best block alone {_f(b['best_alone'])}")
        print(line, flush=True)
    keys = list(partitions)
    for i, a in enumerate(keys):  # partitions composed on the same views: the seam without the views' difficulty
        for b in keys[i + 1:]:
            va, vb = result["groups"][a]["views"], result["groups"][b]["views"]  # classed by their own partitions
            pair = paired_seam([v["psnr"] for v in va], [v["regions"] for v in va],
                               [v["psnr"] for v in vb], [v["regions"] for v in vb])
            result["paired"].append({"a": a, "b": b, **pair})
            if pair["n"]:
                print(f"paired, {pair['n']} views in one partition's overlap and the other's interior: as overlap "
                      f"{pair['psnr_overlap']:.2f} dB, as interior {pair['psnr_interior']:.2f}, "
                      f"seam {pair['seam']:.2f}\n"
                      f"  a = {a}\n  b = {b}", flush=True)
    out = args.out or args.runs_dir / args.experiment / "compose" / ("seam_novel.json" if args.novel else "seam.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    print(f"wrote {out}")
    print(json.dumps({k: {m: v[m] for m in ("psnr", "psnr_overlap", "psnr_interior", "gap")}
                      for k, v in result["groups"].items()}, indent=1))


if __name__ == "__main__":
    main()
