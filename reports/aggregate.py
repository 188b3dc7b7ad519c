"""Statistics over seeds: means with Student-t 95% intervals, best per column, ranks, baseline deltas.

Only `done` trials with a finite value of a metric contribute to that metric; the counts of all
trials per variant (done / total) travel with every summary so nothing disappears silently.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from reports.collect import HIGHER_IS_BETTER

LEVEL = 0.95


def t_interval(values, level: float = LEVEL) -> tuple[float, float, int]:
    """(mean, half-width of the two-sided Student-t interval, n) of the finite values.

    half-width = t_{(1+level)/2, n-1} * s / sqrt(n) with s the sample standard deviation (ddof=1);
    nan for n < 2 (one seed gives no interval), mean nan for n = 0.
    """
    v = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype=float)
    v = v[np.isfinite(v)]
    n = len(v)
    if n == 0:
        return float("nan"), float("nan"), 0
    if n == 1:
        return float(v[0]), float("nan"), 1
    half = stats.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / math.sqrt(n)
    return float(v.mean()), float(half), n


def summarize(trials: pd.DataFrame, metrics: list[str], extra=("train_time",)) -> pd.DataFrame:
    """One row per (scene, variant): n_done, n_total, states, and <m>_mean/<m>_ci/<m>_n per metric."""
    rows = []
    for (scene, variant), g in trials.groupby(["scene", "variant"], observed=True, sort=False):
        done = g[g["state"] == "done"]
        row = {"scene": scene, "variant": variant, "n_total": len(g), "n_done": len(done),
               "states": g["state"].value_counts().to_dict(),
               "seeds": sorted(done["seed"].dropna().tolist(), key=str)}
        for m in [*metrics, *extra]:
            mean, ci, n = t_interval(done[m]) if m in done else (float("nan"), float("nan"), 0)
            row[f"{m}_mean"], row[f"{m}_ci"], row[f"{m}_n"] = mean, ci, n
        rows.append(row)
    out = pd.DataFrame(rows)
    for m in metrics:
        out[f"{m}_best"] = False
        out[f"{m}_rank"] = np.nan
        for idx in out.groupby("scene", sort=False).groups.values():
            col = out.loc[idx, f"{m}_mean"]
            if col.notna().any():
                best = col.max() if HIGHER_IS_BETTER[m] else col.min()
                out.loc[idx, f"{m}_best"] = np.isclose(col, best, rtol=0, atol=1e-12)
                out.loc[idx, f"{m}_rank"] = col.rank(ascending=not HIGHER_IS_BETTER[m], method="min")
    return out


def ranking(summary: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Rank of each variant per scene and metric (1 = best), and the mean rank over all of them."""
    if summary.empty:
        return pd.DataFrame()
    cols = {}
    for m in metrics:
        table = summary.pivot_table(index="variant", columns="scene", values=f"{m}_rank", observed=True,
                                    sort=False, dropna=False)
        for scene in table.columns:
            cols[(m, scene)] = table[scene]
    if not cols:
        return pd.DataFrame()
    out = pd.DataFrame(cols)
    out.columns = [f"{m} {s}" for m, s in out.columns]
    out["mean rank"] = out.mean(axis=1, skipna=True)
    out["scenes"] = summary.groupby("variant", observed=True)["scene"].nunique()
    return out.sort_values("mean rank", na_position="last")


def pick_baseline(variants: list[str], wanted: str | None) -> str:
    """The baseline variant: `wanted` (exact label, or a substring matching exactly one), else the first."""
    from harness.core.errors import HarnessError

    if not variants:
        raise HarnessError("no variants to compare")
    if wanted is None:
        return variants[0]
    if wanted in variants:
        return wanted
    hits = [v for v in variants if wanted in v]
    if len(hits) == 1:
        return hits[0]
    listing = "; ".join(variants[:30])
    if not hits:
        raise HarnessError(f"--baseline '{wanted}' matches no variant; variants are: {listing}")
    raise HarnessError(f"--baseline '{wanted}' matches {len(hits)} variants ({'; '.join(hits[:10])}); "
                       f"give the full label")


def _by_seed(frame: pd.DataFrame, metric: str) -> dict:
    """{seed: value} of the finite values of `metric` (first trial per seed)."""
    out = {}
    for seed, v in zip(frame["seed"].tolist(), frame[metric].tolist()):
        if seed not in out and v is not None and math.isfinite(v):
            out[seed] = float(v)
    return out


def difference(base: pd.DataFrame, other: pd.DataFrame, metric: str, level: float = LEVEL) -> dict:
    """other − base for one metric, with its `level` interval.

    Paired by seed (t-interval of the per-seed differences) when at least two seeds have a value on
    both sides; otherwise Welch's unequal-variance t-interval (Welch–Satterthwaite degrees of freedom).
    """
    return _difference(_by_seed(base, metric), _by_seed(other, metric), level)


def _difference(a: dict, b: dict, level: float = LEVEL) -> dict:
    common = [s for s in a if s in b]
    out = {"delta": float("nan"), "ci": float("nan"), "p": float("nan"), "n_base": len(a), "n": len(b),
           "test": "–"}
    if not a or not b:
        return out
    if len(common) >= 2:
        d = np.array([b[s] - a[s] for s in common])
        mean, half, n = t_interval(d, level)
        sd = d.std(ddof=1)
        p = float(2 * stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1)) if sd > 0 else (0.0 if mean else 1.0)
        return {**out, "delta": mean, "ci": half, "p": p, "test": f"paired by seed (n={n})"}
    va_, vb_ = np.array(list(a.values())), np.array(list(b.values()))
    delta = float(vb_.mean() - va_.mean())
    if len(va_) < 2 or len(vb_) < 2:
        return {**out, "delta": delta, "test": "one seed: no interval"}
    va, vb = va_.var(ddof=1) / len(va_), vb_.var(ddof=1) / len(vb_)
    se = math.sqrt(va + vb)
    if se == 0:
        return {**out, "delta": delta, "ci": 0.0, "p": 0.0 if delta else 1.0, "test": "Welch (zero variance)"}
    dof = (va + vb) ** 2 / (va**2 / (len(va_) - 1) + vb**2 / (len(vb_) - 1))
    half = float(stats.t.ppf(0.5 + level / 2, dof) * se)
    p = float(2 * stats.t.sf(abs(delta) / se, dof))
    return {**out, "delta": delta, "ci": half, "p": p, "test": f"Welch (df={dof:.1f})"}


def baseline_differences(trials: pd.DataFrame, metrics: list[str], baseline: str) -> pd.DataFrame:
    """One row per (scene, variant ≠ baseline): per metric delta, ci, p, test; 'better' is direction-aware."""
    done = trials[trials["state"] == "done"]
    groups: dict[tuple, pd.DataFrame] = {(sc, str(v)): g for (sc, v), g in
                                         done.groupby(["scene", "variant"], observed=True, sort=False)}
    per_seed = {k: {m: _by_seed(g, m) for m in metrics} for k, g in groups.items()}
    rows = []
    for (scene, variant), values in per_seed.items():
        if variant == baseline:
            continue
        base = per_seed.get((scene, baseline), {m: {} for m in metrics})
        row = {"scene": scene, "variant": variant}
        for m in metrics:
            d = _difference(base[m], values[m])
            sign = 1 if HIGHER_IS_BETTER[m] else -1
            lo, hi = d["delta"] - d["ci"], d["delta"] + d["ci"]
            d["verdict"] = ("better" if sign * lo > 0 and sign * hi > 0 else
                            "worse" if sign * lo < 0 and sign * hi < 0 else "no clear difference")
            if not math.isfinite(d["ci"]):
                d["verdict"] = "–"
            row.update({f"{m}_{k}": v for k, v in d.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def pareto_front(times, quality, higher_is_better: bool = True) -> np.ndarray:
    """Boolean mask of points not dominated by another (less or equal time and better-or-equal quality)."""
    t = np.asarray(times, dtype=float)
    q = np.asarray(quality, dtype=float) * (1 if higher_is_better else -1)
    ok = np.isfinite(t) & np.isfinite(q)
    mask = np.zeros(len(t), dtype=bool)
    for i in np.flatnonzero(ok):
        dominated = ok & (t <= t[i]) & (q >= q[i]) & ((t < t[i]) | (q > q[i]))
        mask[i] = not dominated.any()
    return mask
