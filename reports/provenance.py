"""Where the numbers come from: the Gin bindings that tell variants apart, code versions, machines,
dates, evaluation protocols, and the trials that did not finish (with their error line)."""

from __future__ import annotations

import pandas as pd

UNSET = "(unset)"


def differing_bindings(trials: pd.DataFrame, configs: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """{variant: {binding: value}} with only the bindings whose value differs between variants.

    A variant's config is that of its trials with the bindings that vary between its own trials
    (the seed) left out; a binding absent from a variant counts as a value of its own.
    """
    per_variant: dict[str, dict[str, str]] = {}
    seed_like: set[str] = set()  # bindings that vary between the trials of one variant, or hold its seed
    for variant, g in trials.groupby("variant", observed=True, sort=False):
        cfgs = [configs[k] for k in g["key"] if configs.get(k)]
        if not cfgs:
            per_variant[str(variant)] = {}
            continue
        keys: set[str] = set().union(*cfgs)
        seed_like |= {k for k in keys if any(c.get(k) != cfgs[0].get(k) for c in cfgs)}
        per_variant[str(variant)] = {k: cfgs[0].get(k, UNSET) for k in keys}  # bound in some trials only
    if "seed" in trials:
        pairs = [(configs.get(k) or {}, s) for k, s in zip(trials["key"], trials["seed"])]
        bound = set().union(*(c for c, _ in pairs)) if pairs else set()
        seed_like |= {k for k in bound if all(c.get(k) == repr(s) for c, s in pairs if c)}
    names = sorted(set().union(*per_variant.values()) - seed_like) if per_variant else []
    differing = [k for k in names if len({v.get(k, UNSET) for v in per_variant.values()}) > 1]
    return {v: {k: b.get(k, UNSET) for k in differing} for v, b in per_variant.items()}


def _short(commit) -> str:
    return str(commit)[:10] if isinstance(commit, str) and commit else "–"


def _join(values, fmt=str) -> str:
    vals = sorted({fmt(v) for v in values if isinstance(v, str) and v})
    return ", ".join(vals) if vals else "not recorded"


def per_variant(trials: pd.DataFrame, configs: dict) -> list[dict]:
    diff = differing_bindings(trials, configs)
    out = []
    for variant, g in trials.groupby("variant", observed=True, sort=False):
        started = [s for s in g["started"] if isinstance(s, str)]
        finished = [s for s in g["finished"] if isinstance(s, str)]
        out.append({"variant": str(variant), "bindings": diff.get(str(variant), {}),
                    "experiments": ", ".join(dict.fromkeys(g["experiment"])),
                    "commits": _join(g["git_commit"], _short), "hosts": _join(g["host"]),
                    "gpus": _join(g["gpu"]), "started": min(started) if started else "–",
                    "finished": max(finished) if finished else "–",
                    "trials": len(g)})
    return out


def unfinished(trials: pd.DataFrame) -> list[dict]:
    """Trials that are not done, plus done ones without metrics, with what is known about them."""
    rows = []
    for _, r in trials.iterrows():
        if r["state"] == "done" and r["has_metrics"]:
            continue
        what = r["error"] if isinstance(r["error"], str) and r["error"] else ""
        if r["state"] == "done":
            what = "done but metrics.json is missing or unreadable"
        elif r["state"] == "running" and isinstance(r.get("progress"), str):
            what = f"in progress: {r['progress']}"
        rows.append({"id": r["id"], "experiment": r["experiment"], "variant": str(r["variant"]),
                     "scene": r["scene"], "seed": r["seed"], "state": r["state"], "attempts": r["attempts"],
                     "when": next((t for t in (r["finished"], r["updated"], r["started"], r["created"])
                                   if isinstance(t, str) and t), "–"),
                     "host": r["host"] if isinstance(r["host"], str) and r["host"] else "–",
                     "what": (what or "–").splitlines()[0][:300], "detail": divergence_detail(r.get("divergence"))})
    return rows


def divergence_detail(diagnosis) -> str:
    """A diverged trial's last healthy gradient statistics (harness/run/gradients.py), one phrase per
    parameter group: what a reader compares with the group the error names."""
    healthy = diagnosis.get("last_healthy") if isinstance(diagnosis, dict) else None
    if not healthy or not healthy.get("stats"):
        return ""
    parts = []
    for group, s in healthy["stats"].items():
        facts = [f"grad norm {s['norm']:.3g}, max |g| {s['max']:.3g}" if "norm" in s else "",
                 f"max |value| {s['value_max']:.3g}" if "value_max" in s else ""]
        parts.append(f"{group}: " + ", ".join(f for f in facts if f))
    return f"last healthy statistics (step {healthy.get('step')}): " + "; ".join(parts)


def protocols(trials: pd.DataFrame) -> list[str]:
    """Distinct evaluation protocols among done trials (more than one means scores are not comparable)."""
    done = trials[(trials["state"] == "done") & trials["protocol"].notna()]
    return list(dict.fromkeys(done["protocol"]))


def code_versions(trials: pd.DataFrame) -> dict | None:
    """The banner's facts when the done trials compared come from several code versions, or some from
    other code than this checkout's: {'versions': [(code, n)], 'stale': n, 'current': code}; else None."""
    from harness.core.provenance import short_code, source_fingerprint

    done = trials[trials["state"] == "done"]
    if not len(done) or "code" not in done:
        return None
    counts = done["code"].value_counts()
    stale = int(done["code_stale"].sum())
    if len(counts) <= 1 and not stale:
        return None
    return {"versions": [(str(k), int(n)) for k, n in counts.items()], "stale": stale,
            "current": short_code(source_fingerprint())}


def overview(trials: pd.DataFrame, sweeps: dict) -> list[dict]:
    out = []
    for exp, g in trials.groupby("experiment", sort=False):
        sw = sweeps.get(exp) or {}
        out.append({"experiment": exp, "file": sw.get("file", "–"),
                    "user_bindings": "; ".join(sw.get("user_bindings") or []) or "none",
                    "updated": sw.get("updated", "–"), "trials": len(g),
                    "states": ", ".join(f"{n} {s}" for s, n in g["state"].value_counts().items()),
                    "stale": int((~g["current"].astype(bool)).sum())})
    return out
