"""Benchmarks section from pytest-benchmark JSON (`make bench` writes bench.json).

Kernel benchmarks describe themselves in `extra_info`: `op`, `impl` (torch | compile | triton |
cuda | nerfacc), `size` (string), `bytes` (bytes moved by one call) and `device`. From those:
speedup = mean time of impl 'torch' for the same op and size (same device when there is one) /
mean time; effective bandwidth = bytes / mean time, and its fraction of the GPU's peak memory
bandwidth (PEAK_BANDWIDTH_GBS). Benchmarks without `op` are listed by name and time only.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from harness.core.errors import HarnessError
from reports.figures import Figure, _safe, _save, _theme

IMPL_ORDER = ("torch", "compile", "triton", "cuda", "nerfacc")

# Peak memory bandwidth (GB/s) by GPU, from NVIDIA's data sheets, matched against the benchmark's
# `device` (torch.cuda.get_device_name()): the first row whose words all occur in it wins, so
# specific models come before their family.
PEAK_BANDWIDTH_GBS = (
    (("H200",), 4800.0),
    (("H100", "NVL"), 3900.0),
    (("H100", "PCIe"), 2000.0),
    (("H100",), 3350.0),  # SXM5, HBM3 ("NVIDIA H100 80GB HBM3")
    (("A100", "80GB", "PCIe"), 1935.0),
    (("A100", "80GB"), 2039.0),
    (("A100",), 1555.0),  # 40 GB
    (("L40S",), 864.0),
    (("RTX 4090",), 1008.0),
    (("V100",), 900.0),
)


def peak_bandwidth_gbs(device: str | None) -> float:
    """The device's peak memory bandwidth in GB/s, NaN when it is not in PEAK_BANDWIDTH_GBS (CPUs)."""
    name = device.lower() if isinstance(device, str) else ""  # None / NaN for benchmarks without one
    for words, gbs in PEAK_BANDWIDTH_GBS:
        if all(w.lower() in name for w in words):
            return gbs
    return float("nan")


def load(paths: list[Path]) -> pd.DataFrame:
    """One row per benchmark of every file: name, group, file, machine, mean/stddev/min/median (s),
    rounds, op, impl, size, bytes, device, other extra_info as text."""
    rows = []
    for path in paths:
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise HarnessError(f"--bench {path}: no such file (run `make bench` to write bench.json)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HarnessError(f"{path}: not a pytest-benchmark JSON file ({exc})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("benchmarks"), list):
            raise HarnessError(f"{path}: not a pytest-benchmark JSON file (no 'benchmarks' list)")
        machine = doc.get("machine_info") or {}
        cpu = (machine.get("cpu") or {}).get("brand_raw") if isinstance(machine.get("cpu"), dict) else None
        for b in doc["benchmarks"]:
            st = b.get("stats") or {}
            extra = b.get("extra_info") or {}
            row = {"name": b.get("name") or b.get("fullname", "?"), "group": b.get("group") or "",
                   "file": path.name, "host": machine.get("node"), "cpu": cpu,
                   "date": doc.get("datetime"), "commit": (doc.get("commit_info") or {}).get("id")}
            for k in ("mean", "stddev", "min", "median", "max"):
                row[k] = float(st[k]) if isinstance(st.get(k), (int, float)) else np.nan
            row["rounds"] = st.get("rounds")
            for k in ("op", "impl", "size", "device"):
                row[k] = str(extra[k]) if extra.get(k) is not None else None
            row["bytes"] = float(extra["bytes"]) if isinstance(extra.get("bytes"), (int, float)) else np.nan
            rest = {k: v for k, v in extra.items() if k not in ("op", "impl", "size", "device", "bytes")}
            row["extra"] = ", ".join(f"{k}={_short(v)}" for k, v in rest.items())
            rows.append(row)
    return pd.DataFrame(rows)


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)[:40]


def derive(df: pd.DataFrame) -> pd.DataFrame:
    """Add speedup over impl 'torch' (same op, size and device, else same op and size) and bandwidth."""
    if df.empty:
        return df
    df = df.copy()
    df["speedup"] = np.nan
    df["bandwidth_gbs"] = df["bytes"] / df["mean"] / 1e9
    df["peak_fraction"] = df["bandwidth_gbs"] / df["device"].map(peak_bandwidth_gbs)
    kern = df["op"].notna()
    torch_rows = df[kern & (df["impl"] == "torch")]
    for i, r in df[kern].iterrows():
        ref = torch_rows[(torch_rows["op"] == r["op"]) & (torch_rows["size"] == r["size"])]
        same_dev = ref[ref["device"] == r["device"]]
        ref = same_dev if len(same_dev) else ref
        if len(ref):
            df.at[i, "speedup"] = float(ref["mean"].iloc[0]) / r["mean"]
    return df


def _impl_key(impl) -> tuple:
    return (IMPL_ORDER.index(impl) if impl in IMPL_ORDER else len(IMPL_ORDER), str(impl))


def figures(df: pd.DataFrame, out_dir: Path) -> list[Figure]:
    """Per op: mean time against size per implementation (log), and speedup over torch."""
    kern = df[df["op"].notna()] if len(df) else df
    figs = []
    for op, g in kern.groupby("op", sort=True):
        g = g.copy()
        g["impl_dev"] = g["impl"].fillna("?") + np.where(g["device"].notna(), " (" + g["device"].fillna("") + ")", "")
        sizes = sorted(g["size"].fillna("?").unique(), key=_size_key)
        hue_order = sorted(g["impl_dev"].unique(), key=lambda s: _impl_key(s.split(" ")[0]))
        _theme()
        has_speed = g["speedup"].notna().any()
        has_bw = g["bandwidth_gbs"].notna().any()
        n = 1 + has_speed + has_bw
        fig, axs = plt.subplots(1, n, figsize=(5.4 * n, 3.4), squeeze=False, layout="constrained")
        g["size"] = g["size"].fillna("?")
        g["ms"] = g["mean"] * 1e3
        sns.barplot(data=g, x="size", y="ms", hue="impl_dev", order=sizes, hue_order=hue_order, ax=axs[0, 0],
                    errorbar=None)
        axs[0, 0].set_yscale("log")
        axs[0, 0].set_ylabel("mean time (ms, log)")
        axs[0, 0].set_title(f"{op}: time")
        axs[0, 0].legend(fontsize=7, title=None)
        if has_speed:
            sns.barplot(data=g, x="size", y="speedup", hue="impl_dev", order=sizes, hue_order=hue_order,
                        ax=axs[0, 1], errorbar=None)
            axs[0, 1].axhline(1.0, color="#444", lw=0.8, ls="--")
            axs[0, 1].set_ylabel("speedup over torch eager")
            axs[0, 1].set_title(f"{op}: speedup")
            axs[0, 1].legend(fontsize=7, title=None)
        if has_bw:
            ax = axs[0, n - 1]
            sns.barplot(data=g, x="size", y="bandwidth_gbs", hue="impl_dev", order=sizes, hue_order=hue_order,
                        ax=ax, errorbar=None)
            ax.set_ylabel("effective bandwidth (GB/s)")
            ax.set_title(f"{op}: bytes moved / time")
            ax.legend(fontsize=7, title=None)
        for ax in axs.flat:
            ax.tick_params(axis="x", labelrotation=20 if max(map(len, sizes)) > 8 else 0, labelsize=7)
        figs.append(_save(fig, out_dir, _safe(f"bench_{op}"), f"benchmark: {op}",
                          "mean over rounds; speedup = torch eager time / time (same op and size); "
                          "bandwidth = extra_info bytes / mean time"))
    return figs


def _size_key(s: str):
    import re

    nums = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", str(s))]
    return (float(np.prod(nums)) if nums else float("inf"), str(s))


def section(paths: list[Path], out_dir: Path) -> dict | None:
    """Tables (kernels with op/impl, others) and figures for the report; None when no file."""
    if not paths:
        return None
    df = derive(load(paths))
    if df.empty:
        return {"files": [Path(p).name for p in paths], "kernels": [], "others": [], "figures": [], "frame": df}
    kern = df[df["op"].notna()].copy()
    kern["_size"] = kern["size"].map(_size_key)
    kern["_impl"] = kern["impl"].map(_impl_key)
    kern = kern.sort_values(["op", "_size", "device", "_impl"]).drop(columns=["_size", "_impl"])
    others = df[df["op"].isna()]
    return {"files": [Path(p).name for p in paths], "kernels": kern.to_dict("records"),
            "others": others.to_dict("records"), "figures": figures(df, out_dir), "frame": df,
            "machines": sorted({f"{r.host or '?'} ({r.cpu or 'cpu ?'})" for r in df.itertuples()})}
