"""`harness inspect TRIAL --ray VIEW:X,Y [--worst N]`: what a trained trial's render does along single
rays (issue 25, item 3).

The trial's own `config.gin` builds its method on its scene, a checkpoint (best, else latest) is
loaded, and each pixel's ray, from the camera code the evaluation uses (`image_rays`), goes through the
method's `ray_samples` (the 'samples' capability, harness.core.method.SamplesProtocol): the samples its
render composites, from its own sampling and compositing code. Methods with their own view protocol
('views') are asked for the conditioning of the view's scored render. Per ray: a CSV (one row per
sample), a PNG plot and a summary line; for a Block-NeRF block whose experiment was composed, the blocks
the composition blends for that view, with their weights and each block's samples.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.core.data.rays import image_rays
from harness.core.errors import ConfigError, HarnessError, RecordError
from harness.core.method import has as has_capability
from harness.core.records import TrialRecord, read_json
from harness.run import checkpoints

RAY = re.compile(r"^(?P<view>[^:]+):(?P<x>-?\d+),(?P<y>-?\d+)$")
COLUMNS = ("pass", "sample", "t", "delta", "sigma", "r", "g", "b", "alpha", "transmittance", "weight")
CHECKPOINTS = ("best", "latest")


@dataclass
class Loaded:
    """A trial's method with a checkpoint loaded, and the split it is scored on."""

    record: TrialRecord
    method: Any
    split: Any  # the test split as scored (the method's own scene's, for 'own_scene' methods)
    full_split: Any  # the loaded scene's test split (a composition renders these views)
    checkpoint: str  # which state, in words


def parse_ray(spec: str) -> tuple[str, int, int]:
    """'VIEW:X,Y' -> (view, x, y); VIEW is a test-view index or name, (X, Y) a pixel (column, row)."""
    m = RAY.match(spec.strip())
    if m is None:
        raise ConfigError(f"--ray {spec!r}: expected VIEW:X,Y (a test-view index or name, then the pixel's "
                          f"column and row, e.g. 0:50,40)")
    return m["view"], int(m["x"]), int(m["y"])


def find_trial(target: str, runs_dir: Path) -> Path:
    """A trial folder: the path itself, or EXP/ID (a unique prefix of the id) under `runs_dir`."""
    path = Path(target)
    if (path / "config.gin").is_file():
        return path
    exp, _, prefix = target.strip("/").rpartition("/")
    if not exp or not prefix:
        raise ConfigError(f"{target}: not a trial folder; name a trial as EXP/ID (under {runs_dir}) or its folder")
    found = sorted(p for p in (Path(runs_dir) / exp).glob(f"{prefix}*") if (p / "config.gin").is_file())
    where = Path(runs_dir) / exp
    if not found:
        raise ConfigError(f"{target}: no trial folder in {where} has an id starting with '{prefix}'")
    if len(found) > 1:
        raise ConfigError(f"{target}: {len(found)} trials in {where} have ids starting with '{prefix}' "
                          f"({', '.join(p.name for p in found[:5])}): give more of the id")
    return found[0]


def pick_checkpoint(record: TrialRecord, which: str | None) -> tuple[dict, str]:
    """(method state, description): `which` 'best' or 'latest'; None: best if there is one, else latest."""
    if which not in (None, *CHECKPOINTS):
        raise ConfigError(f"--checkpoint {which!r}: expected one of {', '.join(CHECKPOINTS)}")
    best = checkpoints.load_best(record.checkpoint_dir) if which in (None, "best") else None
    if best is not None:
        return best[1]["method"], f"best (step {best[0]}, validation PSNR {float(best[1]['psnr']):.3f})"
    if which == "best":
        raise RecordError(f"{record.dir}: no best checkpoint (best_<step>.pt needs Trainer.validate_every > 0); "
                          f"use --checkpoint latest")
    latest = checkpoints.load_latest(record.checkpoint_dir)
    if latest is None:
        raise RecordError(f"{record.checkpoint_dir}: no checkpoint to inspect (the trial saved none yet)")
    return latest[1]["method"], f"latest (step {latest[0]})" + ("" if which else ", no best checkpoint")


def load_trial(folder: Path, which: str | None) -> Loaded:
    """Build the trial's method from its config.gin on its scene and load the chosen checkpoint."""
    import gin

    from harness.core.data.load_scene import load_scene
    from harness.run import config as cfg
    from harness.run.trial import Trainer

    record = TrialRecord(folder)
    cfg.parse([record.config_path], [])
    trainer = Trainer()
    if not has_capability(trainer.method_cls, "samples"):
        name = getattr(trainer.method_cls, "__name__", str(trainer.method_cls))
        raise HarnessError(f"{folder}: {name} does not declare the 'samples' capability (ray_samples), so its "
                           f"samples cannot be inspected (harness.core.method.SamplesProtocol)")
    state, described = pick_checkpoint(record, which)
    scene = load_scene()
    with gin.unlock_config():
        method = trainer.method_cls(scene=scene, seed=trainer.seed)
    method.load_state_dict(state)
    own = method.trial_scene if has_capability(method, "own_scene") else scene
    return Loaded(record, method, own.split("test"), scene.split("test"), described)


def view_index(split, token: str | int) -> int:
    """A test view given by index or name."""
    names = list(split.names)
    if str(token) in names:
        return names.index(str(token))
    if not re.fullmatch(r"-?\d+", str(token)):
        raise ConfigError(f"view {token!r}: no such test view (names: {_listed(names)})")
    i = int(token)
    if not 0 <= i < len(names):
        raise ConfigError(f"view {i} is out of range: the test split has {len(names)} views "
                          f"(0..{len(names) - 1}: {_listed(names)})")
    return i


def _listed(names: list[str], n: int = 6) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def check_pixel(split, i: int, x: int, y: int) -> None:
    w, h = split.cameras.width, split.cameras.height
    if not (0 <= x < w and 0 <= y < h):
        raise ConfigError(f"pixel ({x}, {y}) is outside view {split.names[i]} ({w}x{h}: x in 0..{w - 1}, "
                          f"y in 0..{h - 1})")


def scored_pixels(method, split) -> np.ndarray:
    """Flat indices (row-major) of the pixels the score uses, in the order of the scored image: all,
    or for a 'views' method those its scored_part keeps (found by cropping an image of indices)."""
    h, w = split.cameras.height, split.cameras.width
    if not has_capability(method, "views"):
        return np.arange(h * w)
    index = np.broadcast_to(np.arange(h * w, dtype=np.float64).reshape(h, w, 1), (h, w, 3))
    return np.asarray(method.scored_part(index))[..., 0].reshape(-1).astype(np.int64)


def worst_pixels(method, split, i: int, n: int, chunk: int) -> list[tuple[int, int]]:
    """The n scored pixels (x, y) of view i with the largest squared RGB error of the method's render
    (as scored: through its view protocol when it has one)."""
    from harness.run.evaluation import render_view

    if has_capability(method, "views"):
        image, target = method.render_view(split, i), method.scored_part(split.images[i])
    else:
        image, target = render_view(method, split, i, chunk), split.images[i]
    error = ((np.asarray(image, np.float64) - np.asarray(target, np.float64)[..., :3]) ** 2).sum(-1).reshape(-1)
    flat = scored_pixels(method, split)[np.argsort(-error, kind="stable")[:n]]
    w = split.cameras.width
    return [(int(p % w), int(p // w)) for p in flat]


def ray_results(method, split, i: int, pixels: list[tuple[int, int]], conditioned: bool = True) -> list[dict]:
    """The samples of the rays of `pixels` of view i (one ray_samples call), one result per pixel."""
    w = split.cameras.width
    origins, dirs = image_rays(split.cameras, i)  # the evaluation's rays, picked by pixel
    flat = torch.as_tensor([y * w + x for x, y in pixels], dtype=torch.long)
    view = (split, i) if conditioned and has_capability(method, "views") else None
    out = method.ray_samples(origins[flat], dirs[flat], view=view)
    scored = set(scored_pixels(method, split).tolist())
    return [_one_ray(out, k, split, i, x, y, y * w + x in scored) for k, (x, y) in enumerate(pixels)]


def _one_ray(out: dict, k: int, split, i: int, x: int, y: int, scored: bool) -> dict:
    passes = {}
    for name, s in out["passes"].items():
        keep = s["ray"] == k
        passes[name] = {key: v[keep].double().numpy() for key, v in s.items() if key != "ray"}
    truth = np.asarray(split.images[i][y, x][:3], np.float64)
    rgb = out["rgb"][k].double().numpy()
    bg = out.get("background")
    return {"view": split.names[i], "index": i, "x": x, "y": y, "rgb": rgb, "acc": float(out["acc"][k]),
            "truth": truth, "error": float(((rgb - truth) ** 2).sum()), "passes": passes, "final": out["final"],
            "background": None if bg is None else bg.double().numpy(), "scored": scored,
            "conditioning": out.get("conditioning", "")}


def label(result: dict, suffix: str = "") -> str:
    return f"{result['view']}_x{result['x']}_y{result['y']}{suffix}"


def write_csv(path: Path, result: dict) -> None:
    """One row per sample of every pass (COLUMNS)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(COLUMNS)
        for name, s in result["passes"].items():
            for j in range(len(s["t"])):
                values = (s["t"][j], s["delta"][j], s["sigma"][j], *s["rgb"][j], s["alpha"][j],
                          s["transmittance"][j], s["weight"][j])
                out.writerow([name, j, *(f"{float(v):.9g}" for v in values)])


def summary(result: dict) -> str:
    """One line: rendered vs true colour, opacity, and per pass the samples and the weight peak."""
    def colour(c):
        return "(" + ", ".join(f"{float(v):.3f}" for v in c) + ")"

    passes = []
    for name, s in result["passes"].items():
        peak = (f"weight peak {s['weight'].max():.3f} at t={s['t'][int(np.argmax(s['weight']))]:.4g}"
                if len(s["t"]) else "no samples")
        passes.append(f"{name}: {len(s['t'])} samples, {peak}")
    scored = "" if result["scored"] else " [not scored]"
    return (f"{result['view']} ({result['x']}, {result['y']}){scored}: rendered {colour(result['rgb'])} vs true "
            f"{colour(result['truth'])} (squared error {result['error']:.4g}), opacity {result['acc']:.4f}; "
            + "; ".join(passes))


def plot(path: Path, result: dict, title: str = "") -> None:
    """Density (with transmittance), colour channels and weights against distance, one column per pass,
    with swatches of the rendered and the true colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    passes = result["passes"]
    n = len(passes)
    fig = plt.figure(figsize=(4.6 * n + 1.8, 6.6), layout="constrained")
    grid = fig.add_gridspec(3, n + 1, width_ratios=[4] * n + [1.2])
    for col, (name, s) in enumerate(passes.items()):
        top = fig.add_subplot(grid[0, col])
        _plot_pass([top, fig.add_subplot(grid[1, col], sharex=top), fig.add_subplot(grid[2, col], sharex=top)],
                   name, s)
    _swatches(fig.add_subplot(grid[:, n]), result)
    fig.suptitle(title or summary(result).split(":")[0], fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_pass(axes, name: str, s: dict) -> None:
    t = s["t"]
    axes[0].set_title(f"{name} pass ({len(t)} samples)", fontsize=9)
    for ax in axes[:2]:
        ax.tick_params(labelbottom=False)
    if not len(t):
        axes[1].text(0.5, 0.5, "no samples on this ray", ha="center", va="center", transform=axes[1].transAxes)
        return
    axes[0].plot(t, s["sigma"], ".-", color="k", ms=3, lw=0.8)
    axes[0].set_ylim(0, max(float(s["sigma"].max()) * 1.08, 1e-6))
    axes[0].set_ylabel("density σ")
    trans = axes[0].twinx()
    trans.plot(t, s["transmittance"], color="tab:purple", lw=0.8)
    trans.set_ylim(0, 1.05)
    trans.set_ylabel("transmittance", color="tab:purple", fontsize=8)
    for c, colour in enumerate(("tab:red", "tab:green", "tab:blue")):
        axes[1].plot(t, s["rgb"][:, c], color=colour, lw=0.9)
    axes[1].scatter(t, np.full(len(t), -0.06), c=np.clip(s["rgb"], 0, 1), s=12, marker="s")
    axes[1].set_ylim(-0.12, 1.05)
    axes[1].set_ylabel("colour r, g, b")
    peak = int(np.argmax(s["weight"]))
    axes[2].vlines(t, 0, s["weight"], color="tab:orange", lw=1.5)
    axes[2].axvline(t[peak], color="k", ls=":", lw=0.8)
    axes[2].set_ylabel(f"weight (sum {s['weight'].sum():.3f})")
    axes[2].set_xlabel("distance t along the ray")
    if t.min() > 0 and t.max() / t.min() > 20:  # log-spaced samples (Block-NeRF) read best on a log axis
        axes[2].set_xscale("log")


def _swatches(ax, result: dict) -> None:
    for k, (what, c) in enumerate((("rendered", result["rgb"]), ("true", result["truth"]))):
        ax.add_patch(_rectangle((0.1, 1.1 - k), 0.8, 0.6, np.clip(c, 0, 1)))
        ax.text(0.5, 1.73 - k, what, ha="center", va="bottom", fontsize=9)
        ax.text(0.5, 1.07 - k, " ".join(f"{float(v):.3f}" for v in c), ha="center", va="top", fontsize=8)
    ax.text(0.5, -0.1, f"opacity {result['acc']:.3f}", ha="center", va="top", fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.4, 2)
    ax.axis("off")


def _rectangle(xy, w: float, h: float, colour):
    from matplotlib.patches import Rectangle

    return Rectangle(xy, w, h, facecolor=colour, edgecolor="k", lw=0.6)


def write(result: dict, out: Path, suffix: str = "", title: str = "") -> list[Path]:
    """The ray's CSV and PNG under `out`."""
    paths = [out / f"{label(result, suffix)}.csv", out / f"{label(result, suffix)}.png"]
    write_csv(paths[0], result)
    plot(paths[1], result, title)
    return paths


# ---- compositions (trials rendered together, e.g. Block-NeRF blocks) -----------------------------------
def compositions(record: TrialRecord, runs_dir: Path) -> list[tuple[str, dict, Path]]:
    """(experiment, compose index entry, its folder) of every composition the trial is a member of."""
    from harness.run.store import experiments_of

    trial_id = record.dir.name
    found = []
    for exp in experiments_of(record.status()):
        folder = Path(runs_dir) / str(exp) / "compose"
        for entry in (read_json(folder / "index.json") or {}).get("records", []):
            if trial_id in (entry.get("members") or {}).values():
                found.append((str(exp), entry, folder / entry["id"]))
    return found


def blended_blocks(entry: dict, folder: Path, view: str) -> dict | None:
    """The blocks the composition blends for `view` and their weights, as its record keeps them."""
    per_view = (read_json(folder / "metrics.json") or {}).get("per_view") or {}
    info = per_view.get(view)
    if not info or "blocks" not in info:
        return None
    return {"blocks": [int(b) for b in info["blocks"]], "weights": [float(w) for w in info["weights"]],
            "members": entry["members"], "variant": entry.get("variant")}


def member_results(runs_dir: Path, exp: str, blend: dict, view: str, pixels, cache: dict) -> dict:
    """Each blended block's samples of the pixels of `view` (the scene's test view of that name), with
    the block's latest state (as the composition loads it) and its own view protocol."""
    out = {}
    for block in blend["blocks"]:
        trial_id = blend["members"][str(block)]
        if trial_id not in cache:
            cache[trial_id] = load_trial(Path(runs_dir) / exp / trial_id, "latest")
        member = cache[trial_id]
        i = view_index(member.full_split, view)
        out[block] = ray_results(member.method, member.full_split, i, pixels)
    return out


# ---- the command --------------------------------------------------------------------------------------
def run_inspect(target: str, rays: list[str], worst: int = 0, view: str | None = None, checkpoint: str | None = None,
                out: Path | None = None, runs_dir: Path = Path("runs")) -> list[str]:
    """Inspect the rays; writes CSVs and PNGs under `out` and returns the lines to print."""
    wanted = [parse_ray(r) for r in rays]
    if worst < 0 or (not wanted and not worst):
        raise ConfigError("give --ray VIEW:X,Y (repeatable) and/or --worst N (N > 0)")
    if view is not None and not worst:
        raise ConfigError("--view goes with --worst N (a --ray names its own view)")
    folder = find_trial(target, runs_dir)
    out = Path(out) if out else folder.parent / ".inspect" / folder.name
    loaded = load_trial(folder, checkpoint)
    split, method = loaded.split, loaded.method
    by_view: dict[int, list[tuple[int, int]]] = {}
    for v, x, y in wanted:
        i = view_index(split, v)
        check_pixel(split, i, x, y)
        by_view.setdefault(i, []).append((x, y))
    if worst:
        i = view_index(split, view if view is not None else 0)
        chunk = _chunk()
        by_view.setdefault(i, []).extend(worst_pixels(method, split, i, worst, chunk))
    lines = [f"trial {folder} ({type(method).__name__}): checkpoint {loaded.checkpoint}"]
    members: dict = {}  # the trials of its compositions, loaded once
    for i, pixels in by_view.items():
        results = ray_results(method, split, i, pixels)
        if results and has_capability(method, "views"):
            lines.append(f"view {split.names[i]}: conditioning: {results[0]['conditioning']}")
        for result in results:
            lines.append(summary(result))
            lines.append("  -> " + ", ".join(str(p) for p in write(result, out)))
        lines += _blocks(loaded, folder, split.names[i], pixels, results, out, members)
    return lines


def _chunk() -> int:
    """The evaluation's chunk of rays (Evaluation.chunk of the parsed config)."""
    from harness.run.evaluation import Evaluation

    return Evaluation().chunk


def _blocks(loaded: Loaded, folder: Path, view: str, pixels, results: list[dict], out: Path,
            cache: dict) -> list[str]:
    """Lines (and files) for the compositions this trial is a member of: per view, the blended blocks
    with their weights, each block's colour of the pixel and the weighted blend (`cache`: member
    trials loaded so far)."""
    runs_dir = folder.parent.parent
    lines: list[str] = []
    for exp, entry, comp in compositions(loaded.record, runs_dir):
        blend = blended_blocks(entry, comp, view)
        if blend is None:
            continue
        pairs = ", ".join(f"block {b} ({blend['members'][str(b)]}) weight {w:.4f}"
                          for b, w in zip(blend["blocks"], blend["weights"]))
        lines.append(f"composition {comp.name} (variant {blend['variant']}) blends view {view} from: {pairs}")
        members = member_results(runs_dir, exp, blend, view, pixels, cache)
        for b in blend["blocks"]:  # as the composition loads them: the latest state
            lines.append(f"  block {b} (latest state), conditioning: {members[b][0]['conditioning']}")
        for k, result in enumerate(results):
            mixed = sum(w * members[b][k]["rgb"] for b, w in zip(blend["blocks"], blend["weights"]))
            lines.append(f"  {label(result)}: blend " + "(" + ", ".join(f"{float(v):.3f}" for v in mixed) + ")"
                         + f" vs true ({', '.join(f'{float(v):.3f}' for v in result['truth'])})")
            for b in blend["blocks"]:
                member = members[b][k]
                lines.append(f"    block {b}: " + summary(member).split(": ", 1)[1])
                write(member, out, f"_block{b}", title=f"block {b}: {label(member)}")
    return lines
