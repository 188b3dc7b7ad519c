"""Report pieces on records written with the project's record functions: statistics, unfinished
trials, Block-NeRF maps, benchmarks, provenance."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from harness.core.records import TrialRecord, atomic_write_json, create_trial_record
from reports import aggregate, bench, collect, provenance
from reports.build import build_report
from tests.test_report import parse_tables


def synthetic_experiment(runs_dir: Path, name: str, axes: dict, seeds=(0, 1, 2), scenes=("s0",), views: int = 4,
                         log_steps: int = 3, seed: int = 0) -> list[TrialRecord]:
    """Done trials for every (scene, axis combination, seed), with metrics, per-view scores and a
    train.jsonl, written through harness.core.records like the trial runner writes them; plus sweep.json."""
    rng = np.random.default_rng(seed)
    records, entries = [], []
    keys = list(axes)
    for scene in scenes:
        for combo in itertools.product(*axes.values()):
            for s in seeds:
                bindings = {"scene": scene, **dict(zip(keys, combo)), "seed": s}
                tid = hashlib.sha256(repr((name, scene, combo, s)).encode()).hexdigest()[:12]
                config = "".join(f"{k} = {v!r}\n" for k, v in dict(zip(keys, combo)).items())
                config += f"Trainer.seed = {s}\nload_scene.path = 'nowhere/{scene}'\nTrainer.iterations = 100\n"
                rec = create_trial_record(runs_dir / name / tid, {
                    "trial_id": tid, "experiment": name, "bindings": bindings,
                    "label": ", ".join(f"{k}={v}" for k, v in bindings.items())}, config)
                rec.set_state("running", host="node1", git_commit="abc123def4567", started="2026-01-01T00:00:00+00:00",
                              attempts=1)
                quality = 20 + sum(float(c) if isinstance(c, (int, float)) else len(str(c)) for c in combo)
                per_view = {f"r_{i}": {"psnr": float(quality + rng.normal()), "ssim": float(0.8 + 0.01 * rng.normal()),
                                       "lpips": float(0.2 + 0.01 * rng.normal())} for i in range(views)}
                rec.write_metrics({m: float(np.mean([v[m] for v in per_view.values()]))
                                   for m in ("psnr", "ssim", "lpips")}
                                  | {"per_view": per_view, "train_time": float(10 + rng.random()), "scene": scene,
                                     "iterations": 100})
                for step in range(1, log_steps + 1):
                    rec.append_log({"step": step * 10, "loss": float(0.1 / step + 0.01 * rng.random())})
                rec.set_state("done")
                records.append(rec)
                entries.append({"id": tid, "bindings": bindings})
    atomic_write_json(runs_dir / name / "sweep.json", {"experiment": name, "file": f"{name}.gin",
                                                     "user_bindings": [], "trials": entries})
    return records


# -- statistics ---------------------------------------------------------------------------------------


def test_t_interval_is_the_student_t_interval():
    x = np.array([24.1, 25.3, 24.7, 26.0])
    mean, half, n = aggregate.t_interval(x)
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert n == 4 and mean == pytest.approx(x.mean()) and half == pytest.approx((hi - lo) / 2)
    assert half == pytest.approx(3.182446305 * x.std(ddof=1) / 2)  # t_{0.975, 3}
    assert aggregate.t_interval([3.0])[0] == 3.0 and math.isnan(aggregate.t_interval([3.0])[1])  # one seed
    assert aggregate.t_interval([float("nan"), 1.0, 3.0])[2] == 2
    assert math.isnan(aggregate.t_interval([])[0])


def test_difference_paired_by_seed_and_welch():
    base = pd.DataFrame({"seed": [0, 1, 2], "psnr": [20.0, 21.0, 22.5]})
    other = pd.DataFrame({"seed": [0, 1, 2], "psnr": [21.0, 21.5, 24.0]})
    d = aggregate.difference(base, other, "psnr")
    diff = other["psnr"] - base["psnr"]
    assert d["test"] == "paired by seed (n=3)"
    assert d["delta"] == pytest.approx(diff.mean())
    assert d["ci"] == pytest.approx(stats.t.ppf(0.975, 2) * diff.std(ddof=1) / math.sqrt(3))
    assert d["p"] == pytest.approx(stats.ttest_rel(other["psnr"], base["psnr"]).pvalue)

    other2 = pd.DataFrame({"seed": [5, 6, 7, 8], "psnr": [23.0, 22.0, 25.0, 24.5]})
    w = aggregate.difference(base, other2, "psnr")
    assert w["test"].startswith("Welch")
    assert w["p"] == pytest.approx(stats.ttest_ind(other2["psnr"], base["psnr"], equal_var=False).pvalue)
    ci = stats.ttest_ind(other2["psnr"], base["psnr"], equal_var=False).confidence_interval(0.95)
    assert w["delta"] - w["ci"] == pytest.approx(ci.low) and w["delta"] + w["ci"] == pytest.approx(ci.high)


def test_best_rank_and_direction():
    trials = pd.DataFrame({"scene": ["a"] * 4 + ["b"] * 4, "variant": ["x", "x", "y", "y"] * 2,
                           "state": "done", "seed": [0, 1] * 4,
                           "psnr": [20, 21, 25, 26, 30, 31, 28, 29.0],
                           "lpips": [0.3, 0.3, 0.1, 0.2, 0.1, 0.1, 0.2, 0.2],
                           "train_time": 1.0})
    trials["variant"] = pd.Categorical(trials["variant"], ["x", "y"])
    s = aggregate.summarize(trials, ["psnr", "lpips"]).set_index(["scene", "variant"])
    assert s.loc[("a", "y"), "psnr_best"] and not s.loc[("a", "x"), "psnr_best"]
    assert s.loc[("b", "x"), "psnr_best"]
    assert s.loc[("a", "y"), "lpips_best"] and s.loc[("b", "x"), "lpips_best"]  # lower LPIPS is better
    r = aggregate.ranking(s.reset_index(), ["psnr", "lpips"])
    assert r.loc["x", "psnr a"] == 2 and r.loc["x", "psnr b"] == 1 and r.loc["x", "mean rank"] == 1.5


def test_pareto_front():
    t = [1, 2, 3, 4, 2.5]
    q = [20, 25, 24, 30, 26]
    assert list(aggregate.pareto_front(t, q)) == [True, True, False, True, True]
    assert list(aggregate.pareto_front(t, q, higher_is_better=False)) == [True, False, False, False, False]


def test_parse_gin_bindings_and_differing():
    text = ("import x\n# comment\nA.b = 1\nC.d = {'k': [1,\n    2]}\n\n# Parameters for E:\nE.f = @G\n")
    assert collect.parse_gin_bindings(text) == {"A.b": "1", "C.d": "{'k': [1, 2]}", "E.f": "@G"}
    trials = pd.DataFrame({"variant": pd.Categorical(["v1", "v1", "v2"]), "key": ["k1", "k2", "k3"]})
    configs = {"k1": {"A.b": "1", "T.seed": "0", "S.x": "3"}, "k2": {"A.b": "1", "T.seed": "1", "S.x": "3"},
               "k3": {"A.b": "2", "T.seed": "0", "S.x": "3", "N.new": "True"}}
    assert provenance.differing_bindings(trials, configs) == {
        "v1": {"A.b": "1", "N.new": provenance.UNSET}, "v2": {"A.b": "2", "N.new": "True"}}


# -- unfinished trials ----------------------------------------------------------------------------------


def test_failed_running_and_missing_metric_are_shown(tmp_path):
    runs = tmp_path / "runs"
    recs = synthetic_experiment(runs, "mixed", {"M.lr": [0.1, 0.2]}, seeds=(0, 1, 2))
    failed, running, no_ssim, no_metrics = recs[0], recs[1], recs[3], recs[4]
    failed.set_state("running")
    failed.set_state("failed", error="RuntimeError: injected failure at step 7\nsecond line")
    running.set_state("running")
    running.write_progress(40, 100, phase="train")
    m = no_ssim.metrics()
    del m["ssim"]
    no_ssim.write_metrics(m)
    no_metrics.metrics_path.unlink()
    (recs[5].dir / "status.json").write_text("{torn")  # unreadable record: kept as 'unknown'

    out = build_report(["mixed"], runs, tmp_path / "rep", bench_paths=[])
    html = out.read_text()
    tables = parse_tables(out)
    trials = tables.table("trials")[1:]
    assert len(trials) == 6  # nobody dropped
    state = {a["data-trial"]: a["data-state"] for a, _ in trials}
    assert state[failed.dir.name] == "failed" and state[running.dir.name] == "running"
    assert state[recs[5].dir.name] == "unknown"
    row = {a["data-trial"]: cells for a, cells in trials}
    assert row[running.dir.name][1] == "running (train 40/100)"
    assert "RuntimeError: injected failure at step 7" in row[failed.dir.name][-1]
    assert "second line" not in html
    ssim_col = tables.table("trials")[0][1].index("SSIM ↑")
    assert row[no_ssim.dir.name][ssim_col] == "missing"
    assert row[no_metrics.dir.name][ssim_col] == "missing"

    unfinished = {cells[0].split("/")[1]: cells for _, cells in tables.table("unfinished")[1:]}
    assert set(unfinished) == {failed.dir.name, running.dir.name, no_metrics.dir.name, recs[5].dir.name}
    assert unfinished[failed.dir.name][-1] == "RuntimeError: injected failure at step 7"
    assert unfinished[running.dir.name][-1] == "in progress: train 40/100"
    assert "metrics.json is missing" in unfinished[no_metrics.dir.name][-1]
    assert unfinished[recs[5].dir.name][-3:] == ["–", "–", "status.json unreadable"]  # when, host: unknown

    results = tables.table("results")[1:]
    assert [a["data-variant"] for a, _ in results] == ["lr=0.1", "lr=0.2"]
    assert results[0][1][1] == "1/3 (1 failed, 1 running)"
    assert results[1][1][1] == "2/3 (1 unknown)"
    # lr=0.2: two done trials, one without SSIM (n=1: a mean and no interval), one without metrics
    psnr_col = tables.table("results")[0][1].index("PSNR ↑")
    assert results[1][1][psnr_col].endswith("(n=1)") and "±" not in results[1][1][psnr_col]
    assert results[1][1][psnr_col + 1] == "missing"  # SSIM: neither done trial has it
    csv = pd.read_csv(tmp_path / "rep" / "trials.csv")
    assert sorted(csv["state"]) == ["done", "done", "done", "failed", "running", "unknown"]


def test_empty_and_all_failed(tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(Exception, match="no such experiment folder"):
        build_report(["absent"], runs, tmp_path / "rep")
    recs = synthetic_experiment(runs, "bad", {"M.lr": [0.1]}, seeds=(0,))
    recs[0].set_state("running")
    recs[0].set_state("failed", error="ValueError: boom")
    recs[0].metrics_path.unlink()
    out = build_report(["bad"], runs, tmp_path / "rep", bench_paths=[])
    rows = parse_tables(out).table("results")[1:]
    assert rows[0][1][1] == "0/1 (1 failed)"
    assert "ValueError: boom" in out.read_text()


# -- several experiments, scenes, Block-NeRF -------------------------------------------------------------


def test_two_experiments_several_scenes_ranking_and_blocks(tmp_path):
    runs = tmp_path / "runs"
    synthetic_experiment(runs, "a", {"M.lr": [1, 2]}, scenes=("s0", "s1"), seed=1)
    recs = synthetic_experiment(runs, "b", {"M.tv": [0.5]}, scenes=("s0", "s1"), seed=2)
    out = build_report(["a", "b"], runs, tmp_path / "rep", bench_paths=[], baseline="b:")
    assert not (tmp_path / "rep" / "assets" / "block_map.png").exists()  # no block key: no map
    tables = parse_tables(out)
    assert [a["data-variant"] for a, _ in tables.table("results")[1:]] == ["a: lr=1", "a: lr=2", "b: tv=0.5"]
    assert [a["data-variant"] for a, _ in tables.table("results", 1)[1:]] == ["a: lr=1", "a: lr=2", "b: tv=0.5"]
    ranking = tables.table("ranking")
    assert ranking[1][1][0] == "a: lr=2"  # highest PSNR in both scenes
    assert "Baseline: <b>b: tv=0.5</b>" in out.read_text()

    for i, rec in enumerate(recs):  # Block-NeRF contract: metrics.json 'block'
        m = rec.metrics()
        m["block"] = {"index": i % 3, "center": [i % 3 * 10.0, 0.0, 0.0], "radius": 6.0,
                      "cameras": [[i % 3 * 10.0 + dx, dy, 1.0] for dx, dy in ((-2, 1), (1, -1), (2, 2))]}
        rec.write_metrics(m)
    out = build_report(["a", "b"], runs, tmp_path / "rep", bench_paths=[])
    assert (tmp_path / "rep" / "assets" / "block_map.png").stat().st_size > 5000
    assert 'alt="Block-NeRF blocks"' in out.read_text()


# -- benchmarks ---------------------------------------------------------------------------------------------


def _bench_file(path: Path) -> Path:
    def case(name, mean, extra=None):
        return {"name": name, "fullname": f"tests/bench/x.py::{name}", "group": "g", "params": None,
                "extra_info": extra or {}, "stats": {"mean": mean, "stddev": mean / 10, "min": mean * 0.9,
                                                      "median": mean, "max": mean * 1.2, "rounds": 5}}
    doc = {"machine_info": {"node": "box", "cpu": {"brand_raw": "Test CPU"}}, "datetime": "2026-01-01T00:00:00",
           "commit_info": {"id": "abc"}, "benchmarks": [
               case("composite[torch-1k]", 0.004, {"op": "composite", "impl": "torch", "size": "1024x64",
                                                  "bytes": 8e6, "device": "cpu"}),
               case("composite[triton-1k]", 0.001, {"op": "composite", "impl": "triton", "size": "1024x64",
                                                   "bytes": 8e6, "device": "cpu"}),
               case("composite[torch-4k]", 0.016, {"op": "composite", "impl": "torch", "size": "4096x64",
                                                  "bytes": 3.2e7, "device": "cpu"}),
               case("composite[compile-4k]", 0.008, {"op": "composite", "impl": "compile", "size": "4096x64",
                                                    "device": "cpu"}),
               case("test_psnr", 0.25, {"views": 25})]}
    path.write_text(json.dumps(doc))
    return path


def test_bench_speedup_bandwidth_and_section(tmp_path):
    df = bench.derive(bench.load([_bench_file(tmp_path / "bench.json")])).set_index("name")
    assert df.loc["composite[triton-1k]", "speedup"] == pytest.approx(4.0)
    assert df.loc["composite[torch-1k]", "speedup"] == pytest.approx(1.0)
    assert df.loc["composite[compile-4k]", "speedup"] == pytest.approx(2.0)
    assert df.loc["composite[triton-1k]", "bandwidth_gbs"] == pytest.approx(8e6 / 0.001 / 1e9)
    assert math.isnan(df.loc["composite[compile-4k]", "bandwidth_gbs"])  # no bytes given
    assert math.isnan(df.loc["test_psnr", "speedup"])
    assert math.isnan(df.loc["composite[triton-1k]", "peak_fraction"])  # a CPU: no data-sheet peak

    runs = tmp_path / "runs"
    synthetic_experiment(runs, "e", {"M.lr": [1]}, seeds=(0, 1))
    out = build_report(["e"], runs, tmp_path / "rep", bench_paths=[tmp_path / "bench.json"])
    t = parse_tables(out)
    kern = t.table("bench")[1:]
    assert [c[2] for _, c in kern] == ["torch", "triton", "torch", "compile"]  # by op, size, impl
    assert kern[1][1][8] == "4.00×" and kern[1][1][9] == "8.00"
    assert t.table("bench-other")[1][1][0] == "test_psnr"
    assert (tmp_path / "rep" / "assets" / "bench_composite.png").exists()
    assert (tmp_path / "rep" / "bench.csv").exists()


@pytest.mark.parametrize("device, gbs", [("NVIDIA H100 80GB HBM3", 3350.0), ("NVIDIA H100 PCIe", 2000.0),
                                         ("NVIDIA H100 NVL", 3900.0), ("NVIDIA H200", 4800.0),
                                         ("NVIDIA A100-SXM4-80GB", 2039.0), ("NVIDIA A100 80GB PCIe", 1935.0),
                                         ("NVIDIA A100-SXM4-40GB", 1555.0)])
def test_bench_fraction_of_the_gpus_peak_bandwidth(device, gbs):
    assert bench.peak_bandwidth_gbs(device) == gbs
    df = pd.DataFrame([{"name": "k", "op": "composite", "impl": "triton", "size": "1x1", "device": device,
                        "mean": 0.002, "bytes": 4e9}])
    row = bench.derive(df).iloc[0]
    assert row["bandwidth_gbs"] == pytest.approx(2000.0)
    assert row["peak_fraction"] == pytest.approx(2000.0 / gbs)


def test_categorical_and_tuple_axes(tmp_path):
    runs = tmp_path / "runs"
    synthetic_experiment(runs, "cat", {"Trainer.optimizer": ["@Adam", "@RMSprop"], "Grid.res": [(64, 64), (128, 128)]},
                         seeds=(0, 1))
    out = build_report(["cat"], runs, tmp_path / "rep", bench_paths=[])
    variants = [a["data-variant"] for a, _ in parse_tables(out).table("results")[1:]]
    # records are JSON (tuples come back as lists, keys sorted); variants keep the sweep's trial order
    assert variants == ["res=[64, 64], optimizer=@Adam", "res=[128, 128], optimizer=@Adam",
                        "res=[64, 64], optimizer=@RMSprop", "res=[128, 128], optimizer=@RMSprop"]
    assets = tmp_path / "rep" / "assets"
    assert (assets / "psnr_vs_Trainer_optimizer.png").exists() and (assets / "psnr_vs_Grid_res.png").exists()


def test_block_map_keeps_two_partitions_of_one_size_apart(tmp_path):
    """Two 2-block partitions half a spacing apart (block_nerf_seam): each gets its own panel, with or
    without the records listing the partition's centres (older records do not)."""
    from reports import figures

    def rows(with_partition: bool):
        out = []
        for centres in ([0.0, 10.0], [5.0, 15.0]):
            for seed in (0, 1):  # a block seen twice stays one circle
                for i, c in enumerate(centres):
                    block = {"index": i, "center": [c, 0.0, 0.0], "radius": 7.5, "n_blocks": 2,
                             "cameras": [[c - 1, 0.0, 1.0], [c + 1, 0.5, 1.0]]}
                    if with_partition:
                        block["partition"] = [[x, 0.0, 0.0] for x in centres]
                    out.append({"scene": "street", "block": block, "state": "done", "psnr": 20.0 + i + seed})
        return pd.DataFrame(out)

    for with_partition in (True, False):
        assert figures.block_map(rows(with_partition), tmp_path / str(with_partition), "psnr") is not None
    key = (("street", "2", "null"), 0, 5.0, 0.0, 7.5)
    blocks = {(("street", "2", "null"), 0, 0.0, 0.0, 7.5): {}}
    assert figures._separate_partitions(key, blocks)[0] == ("street", "2", "null", 1)  # index 0 taken elsewhere
    blocks[(("street", "2", "null", 1), 0, 5.0, 0.0, 7.5)] = {}
    assert figures._separate_partitions(key, blocks)[0] == ("street", "2", "null", 1)  # its own place again
    other = (("street", "2", "null"), 1, 10.0, 0.0, 7.5)
    assert figures._separate_partitions(other, blocks)[0] == ("street", "2", "null")  # index 1 is free
