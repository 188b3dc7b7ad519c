"""Compose records (runs/EXP/compose/, written by `harness compose`) in the report: collect_composed and
the "Composed results" section / composed.csv of build_report. Fake records only; no training."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

from harness.core.records import atomic_write_json
from reports.build import build_report
from reports.collect import collect_composed
from tests.test_report import parse_tables
from tests.test_report_units import synthetic_experiment


def _metrics(experiment: str, group: dict, variant: str, psnr: float, *, overlap=None, n_overlap=8) -> dict:
    """A compose metrics.json like harness/run/composition.py + baselines/block_nerf/compose.py write it."""
    return {"experiment": experiment, "compose_variant": variant, "group": group, "psnr": psnr,
            "ssim": 0.5 + psnr / 100, "lpips": 0.6 - psnr / 100, "num_views": 25,
            "per_view": {"frame_00000": {"psnr": psnr, "blocks": [0], "weights": [1.0]}},
            "blocks_rendered_mean": 1.24,
            "seam": {"psnr_overlap": overlap, "psnr_interior": psnr + 0.25, "n_overlap": n_overlap,
                     "n_interior": 25 - n_overlap},
            "options": {"power": 4}, "members": {"0": "a" * 12, "1": "b" * 12}}


def write_compose(runs: Path, experiment: str, records: list[tuple[str, str, dict, dict | None]]) -> None:
    """compose/index.json listing (id, variant, group, metrics or None = no metrics.json) in order."""
    folder = runs / experiment / "compose"
    index = []
    for ident, variant, group, metrics in records:
        if metrics is not None:
            atomic_write_json(folder / ident / "metrics.json", metrics)
        index.append({"id": ident, "variant": variant, "group": group,
                      "members": {"0": "a" * 12, "1": "b" * 12}})
    atomic_write_json(folder / "index.json", {"experiment": experiment, "updated": "2026-01-01T00:00:00+00:00",
                                              "records": index})


GROUP_A = {"Appearance.mode": "none", "BlockPartition.n_blocks": 4, "seed": 0}
GROUP_B = {"Appearance.mode": "appearance_id", "BlockPartition.n_blocks": 4, "seed": 0}


def test_collect_composed_rows(tmp_path, caplog):
    runs = tmp_path / "runs"
    write_compose(runs, "blk", [
        ("aaaaaaaaaaaa", "full", GROUP_A, _metrics("blk", GROUP_A, "full", 17.08, overlap=16.87)),
        ("bbbbbbbbbbbb", "wide", GROUP_B, _metrics("blk", GROUP_B, "wide", 20.34, overlap=None, n_overlap=0)),
        ("cccccccccccc", "full", GROUP_B, None),  # listed, but its metrics.json is missing
        ("dddddddddddd", "full", GROUP_B, None),  # listed, metrics.json corrupt (below)
    ])
    (runs / "blk" / "compose" / "dddddddddddd").mkdir()
    (runs / "blk" / "compose" / "dddddddddddd" / "metrics.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="reports.collect"):
        frame = collect_composed(runs, "blk")
    assert frame["id"].tolist() == ["aaaaaaaaaaaa", "bbbbbbbbbbbb"]
    assert "cccccccccccc" in caplog.text and "dddddddddddd" in caplog.text
    a, b = frame.to_dict("records")
    assert a["experiment"] == "blk" and a["variant"] == "full" and b["variant"] == "wide"
    # bindings as columns under their full names (as in the trial table); the seed in its own column
    assert a["Appearance.mode"] == "none" and b["Appearance.mode"] == "appearance_id"
    assert a["BlockPartition.n_blocks"] == 4 and a["seed"] == 0 and "scene" not in frame
    assert a["psnr"] == pytest.approx(17.08) and b["psnr"] == pytest.approx(20.34)
    assert a["ssim"] == pytest.approx(0.5 + 0.1708) and a["lpips"] == pytest.approx(0.6 - 0.1708)
    assert a["blocks_rendered_mean"] == pytest.approx(1.24)
    assert a["seam_psnr_overlap"] == pytest.approx(16.87) and a["seam_psnr_interior"] == pytest.approx(17.33)
    assert math.isnan(b["seam_psnr_overlap"]) and b["seam_n_overlap"] == 0 and b["seam_n_interior"] == 25


def test_collect_composed_without_records_is_empty(tmp_path):
    runs = tmp_path / "runs"
    assert collect_composed(runs, "absent").empty  # no experiment folder at all
    (runs / "plain" / "compose").mkdir(parents=True)
    assert collect_composed(runs, "plain").empty  # compose folder without index.json
    (runs / "plain" / "compose" / "index.json").write_text("{torn")
    assert collect_composed(runs, "plain").empty  # unreadable index
    write_compose(runs, "nothing", [("eeeeeeeeeeee", "full", GROUP_A, None)])
    frame = collect_composed(runs, "nothing")
    assert frame.empty and {"psnr", "seam_psnr_overlap", "variant"} <= set(frame.columns)


def test_report_shows_composed_records(tmp_path):
    runs = tmp_path / "runs"
    # trials: one per (block, appearance mode, seed), as a Block-NeRF sweep has them
    synthetic_experiment(runs, "blk", {"BlockNeRF.block": [0, 1], "Appearance.mode": ["none", "appearance_id"]},
                         seeds=(0, 1), views=2, log_steps=1)
    psnr = {("none", 0): 17.0, ("none", 1): 17.5, ("appearance_id", 0): 20.25, ("appearance_id", 1): 20.5}
    records = []
    for (app, seed), value in psnr.items():
        group = {"Appearance.mode": app, "scene": "s0", "seed": seed}
        records.append((f"{app[:4]}{seed}".ljust(12, "0"), "full", group,
                        _metrics("blk", group, "full", value, overlap=value - 0.5)))
    group = {"Appearance.mode": "appearance_id", "scene": "s0", "seed": 0}
    records.append(("wide00000000", "wide", group, _metrics("blk", group, "wide", 20.34, overlap=19.78)))
    records.append(("lost00000000", "wide", {**group, "seed": 1}, None))  # its metrics.json is missing
    write_compose(runs, "blk", records)

    out = build_report(["blk"], runs, tmp_path / "rep", bench_paths=[])
    html = out.read_text()
    assert 'id="composed"' in html and "Composed results" in html
    rows = parse_tables(out).table("composed")
    head = rows[0][1]
    assert head[0] == "variant" and head[1].startswith("PSNR")
    body = {attrs["data-variant"]: cells for attrs, cells in rows[1:]}
    # the label: the bindings that differ between rows (not the seed, not the one scene) · composition variant
    assert list(body) == ["mode=none · full", "mode=appearance_id · full",
                          "mode=appearance_id · wide"]

    def t_text(values):
        half = stats.t.ppf(0.975, len(values) - 1) * pd.Series(values).std(ddof=1) / math.sqrt(len(values))
        return f"{sum(values) / len(values):.2f} ± {half:.2f}"

    assert body["mode=none · full"][1] == t_text([17.0, 17.5])
    assert body["mode=appearance_id · full"][1] == t_text([20.25, 20.5])
    assert body["mode=appearance_id · wide"][1] == "20.34"  # one seed: the mean alone
    assert body["mode=appearance_id · wide"][head.index("seam PSNR overlap")] == "19.78"
    assert body["mode=appearance_id · wide"][head.index("blocks / view")] == "1.24"
    assert body["mode=none · full"][head.index("seeds (n)")] == "0, 1 (2)"

    csv = pd.read_csv(out.parent / "composed.csv")
    assert len(csv) == 5 and "lost00000000" not in set(csv["id"])
    assert csv.set_index("id").loc["wide00000000", "psnr"] == pytest.approx(20.34)
    assert {"label", "variant", "Appearance.mode", "seed", "seam_psnr_interior"} <= set(csv.columns)
    # the trial tables are still there
    assert parse_tables(out).table("results") and (out.parent / "trials.csv").exists()


def test_report_without_compose_records_has_no_composed_section(tmp_path):
    runs = tmp_path / "runs"
    synthetic_experiment(runs, "plain", {"ToyColour.lr": [0.01, 0.1]}, seeds=(0,), views=2, log_steps=1)
    out = build_report(["plain"], runs, tmp_path / "rep", bench_paths=[])
    html = out.read_text()
    assert "Composed results" not in html and 'class="composed"' not in html and "#composed" not in html
    assert "Seam checks" not in html and "#seam" not in html
    assert not (out.parent / "composed.csv").exists()


def test_report_shows_seam_checks(tmp_path):
    """runs/EXP/compose/seam*.json (scripts/block_nerf_seam.py) become a 'Seam checks' section: one table
    per file with the group labels (the bindings that differ), and the paired rows."""
    import json

    runs = tmp_path / "runs"
    synthetic_experiment(runs, "seamx", {"BlockNeRF.block": [0, 1]}, seeds=(0,), views=2, log_steps=1)
    key = {s: json.dumps({"BlockPartition.shift": s, "BlockPartition.n_blocks": 4, "seed": 0}, sort_keys=True)
           for s in (0.0, 0.5)}
    one = json.dumps({"BlockPartition.shift": 0.0, "BlockPartition.n_blocks": 1, "seed": 0}, sort_keys=True)

    def group(psnr, gap, blended=None):
        g = {"views": [], "psnr": psnr, "psnr_overlap": psnr - gap / 2, "n_overlap": 10,
             "psnr_interior": psnr + gap / 2, "n_interior": 30, "gap": gap}
        return {**g, "blended": blended} if blended else g

    seam = {"views": "novel", "n_views": 40,
            "groups": {key[0.0]: group(20.0, 1.0, {"n": 9, "blend": 19.5, "nearest_alone": 19.2, "best_alone": 19.4}),
                       key[0.5]: group(19.8, -0.4), one: group(19.0, 1.3)},
            "paired": [{"a": key[0.0], "b": key[0.5], "n": 25, "psnr_overlap": 19.6, "psnr_interior": 19.75,
                        "seam": 0.15}]}
    atomic_write_json(runs / "seamx" / "compose" / "seam_novel.json", seam)
    atomic_write_json(runs / "seamx" / "compose" / "seam_broken.json", {"no": "groups"})  # skipped
    out = build_report(["seamx"], runs, tmp_path / "rep", bench_paths=[])
    html = out.read_text()
    assert 'id="seam"' in html and "40 novel views" in html and "seam_broken" not in html
    rows = parse_tables(out).table("seam")
    body = {cells[0]: cells for _, cells in rows[1:]}
    assert set(body) == {"n_blocks=4, shift=0", "n_blocks=4, shift=0.5", "n_blocks=1, shift=0"}
    assert body["n_blocks=4, shift=0"][1:5] == ["20.00", "19.50 (10)", "20.50 (30)", "1.00"]
    assert body["n_blocks=4, shift=0"][5:] == ["19.50 (9)", "19.20", "19.40"]
    assert body["n_blocks=1, shift=0"][5:] == ["–", "–", "–"]
    paired = parse_tables(out).table("seam-paired")
    assert paired[1][1] == ["n_blocks=4, shift=0 | n_blocks=4, shift=0.5", "25", "19.60", "19.75", "0.15"]
