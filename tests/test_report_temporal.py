"""The report's "Dynamic scenes" section (issue 29) on records written like a dynamic scene's scoring writes
them: real PNG renders, ground truth beside the trial folders, and metrics.json `temporal`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harness.core.data.images import read_image
from harness.run.evaluation import save_ground_truth, save_png
from reports import temporal
from reports.aggregate import t_interval
from reports.build import build_report
from reports.collect import collect
from tests.test_report import parse_tables
from tests.test_report_units import synthetic_experiment

STEPS, CAMERAS, H, W = 5, 2, 24, 32
VARIANTS = ("lr=0.1", "lr=0.2")


def _truth(t: int, c: int) -> np.ndarray:
    """A gradient with a square that moves with time: every (step, camera) differs."""
    img = np.zeros((H, W, 3), np.uint8)
    img[..., 0] = np.linspace(0, 200, W, dtype=np.uint8)[None]
    img[..., 2] = 60 * c
    img[4 + 4 * c:12 + 4 * c, 2 + 4 * t:10 + 4 * t] = (250, 240, 30)
    return img


def dynamic_experiment(runs: Path, name: str = "dyn", flicker: bool = True) -> list:
    """Two variants x two seeds of done trials scored on a dynamic scene: per view a render
    (renders/<view>.png) and its ground truth (save_ground_truth), per_view and `temporal` records."""
    recs = synthetic_experiment(runs, name, {"M.lr": [0.1, 0.2]}, seeds=(0, 1), views=1)
    for i, rec in enumerate(recs):
        rng = np.random.default_rng(i)
        per_view, truth, sequences, per_step = {}, {}, {}, []
        for t in range(STEPS):
            for c in range(CAMERAS):
                view = f"test_t{t:02d}_c{c:02d}"
                target = _truth(t, c)
                save_png(rec.dir / "renders" / f"{view}.png",
                         np.clip(target.astype(int) + rng.integers(-20, 21, target.shape), 0, 255).astype(np.uint8))
                truth[view] = save_ground_truth(rec.dir, target)
                per_view[view] = {"psnr": float(24 + i + rng.random()), "ssim": float(0.9 - 0.01 * t),
                                  "lpips": float(0.1 + 0.01 * rng.random())}
                sequences.setdefault(str(c), []).append(view)
            step = [per_view[f"test_t{t:02d}_c{c:02d}"] for c in range(CAMERAS)]
            per_step.append({"time_step": t, "views": CAMERAS,
                             **{m: float(np.mean([v[m] for v in step])) for m in ("psnr", "ssim", "lpips")}})
        metrics = rec.metrics()
        metrics.update({m: float(np.mean([v[m] for v in per_view.values()])) for m in ("psnr", "ssim", "lpips")})
        metrics.update(per_view=per_view, ground_truth=truth)
        metrics["temporal"] = {"per_time_step": per_step, "sequences": sequences}
        if flicker:
            warp, floor = 0.002 + 0.001 * i + 0.0001 * rng.random(), 0.0015
            metrics["temporal"]["flicker"] = {"warp_error": warp, "warp_error_truth": floor, "excess": warp - floor,
                                              "ratio": warp / floor, "num_cameras": CAMERAS, "per_camera": {},
                                              "protocol": {"measure": "warping error"}}
            metrics.update(warp_error=warp, warp_error_truth=floor)
        else:
            metrics["temporal"]["flicker_skipped"] = "the split has no flow"
        rec.write_metrics(metrics)
    return recs


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(records, report folder) of a dynamic experiment's report."""
    root = tmp_path_factory.mktemp("report_temporal")
    recs = dynamic_experiment(root / "runs")
    out = build_report(["dyn"], root / "runs", root / "rep", bench_paths=[])
    return recs, out.parent


def test_the_section_appears_for_temporal_trials_with_its_curves(built):
    recs, rep = built
    html = (rep / "index.html").read_text()
    assert '<h2 id="temporal">Dynamic scenes</h2>' in html and 'href="#temporal"' in html
    curves = rep / "assets" / "temporal_per_step.png"
    assert curves.stat().st_size > 5000 and (rep / "assets" / "temporal_per_step.svg").is_file()
    assert 'src="assets/temporal_per_step.png"' in html
    steps = pd.read_csv(rep / "temporal.csv")
    assert len(steps) == len(recs) * STEPS
    for rec in recs:  # every step's scores as recorded
        mine = steps[steps["id"] == rec.dir.name].sort_values("time_step")
        recorded = rec.metrics()["temporal"]["per_time_step"]
        assert mine["time_step"].tolist() == list(range(STEPS))
        for m in ("psnr", "ssim", "lpips"):
            assert mine[m].tolist() == [s[m] for s in recorded]


def test_each_camera_is_an_animation_of_render_beside_truth(built):
    recs, rep = built
    files = sorted(p.relative_to(rep / "assets").as_posix() for p in (rep / "assets").rglob("*.webp"))
    assert files == [f"temporal_0/cam{c}_v{v}.webp" for c in range(CAMERAS) for v in range(len(VARIANTS))]
    table = parse_tables(rep / "index.html").table("anim")
    assert table[0][1] == ["camera", *(f"{v} (seed 0)" for v in VARIANTS)]  # the first seed represents each
    for v, rec in enumerate((recs[0], recs[2])):  # the seed-0 trial of each variant
        gt = rec.metrics()["ground_truth"]
        for c in range(CAMERAS):
            with Image.open(rep / "assets" / "temporal_0" / f"cam{c}_v{v}.webp") as im:
                assert im.format == "WEBP" and im.is_animated and im.n_frames == STEPS
                assert im.info["loop"] == 0
                for t in range(STEPS):
                    im.seek(t)
                    frame = np.asarray(im.convert("RGB"))  # loads the frame, and with it its duration
                    assert im.info["duration"] == temporal.FRAME_MS
                    view = f"test_t{t:02d}_c{c:02d}"
                    assert frame.shape == (H + temporal.STRIP, 2 * W + temporal.GAP, 3)
                    # lossless: the render as saved | the ground truth as scored
                    assert np.array_equal(frame[:H, :W], _u8(rec.dir / "renders" / f"{view}.png"))
                    assert np.array_equal(frame[:H, W + temporal.GAP:], _u8(rec.dir / gt[view]))


def _u8(path: Path) -> np.ndarray:
    return np.round(read_image(path)[..., :3] * 255).astype(np.uint8)


def test_flicker_table_values_equal_the_records(built):
    recs, rep = built
    by_variant: dict[str, list[dict]] = {}
    for rec in recs:
        m = rec.metrics()
        by_variant.setdefault(f"lr={json.loads((rec.dir / 'status.json').read_text())['bindings']['M.lr']}",
                              []).append(m)
    table = parse_tables(rep / "index.html").table("flicker")
    header, body = table[0][1], table[1:]
    assert header[3:] == [h for _, h, _ in temporal.FLICKER_COLUMNS]
    assert [a["data-variant"] for a, _ in body] == list(VARIANTS)
    for attrs, cells in body:
        records = by_variant[attrs["data-variant"]]
        assert cells[2] == "2"
        for (key, _, fmt), text in zip(temporal.FLICKER_COLUMNS, cells[3:]):
            values = [m["psnr"] if key == "psnr" else m["temporal"]["flicker"][key] for m in records]
            mean, half, _ = t_interval(values)
            assert text == f"{fmt.format(mean)} ± {fmt.format(half)}", key
    csv = pd.read_csv(rep / "flicker.csv").set_index("id")
    for rec in recs:  # each trial's numbers, exactly
        m = rec.metrics()
        row = csv.loc[rec.dir.name]
        assert row["psnr"] == m["psnr"]
        for key in ("warp_error", "warp_error_truth", "excess", "ratio", "num_cameras"):
            assert row[key] == m["temporal"]["flicker"][key], key


def test_the_tradeoff_figure_is_in_the_section(built):
    _, rep = built
    html = (rep / "index.html").read_text()
    png, svg = rep / "assets" / "temporal_tradeoff.png", rep / "assets" / "temporal_tradeoff.svg"
    assert png.stat().st_size > 5000 and svg.is_file()
    section = html[html.index('<h2 id="temporal">'):]
    assert 'src="assets/temporal_tradeoff.png"' in section and 'href="assets/temporal_tradeoff.svg"' in section
    assert "higher is better in PSNR" in section and "the ground truth&#39;s own warping error" in section
    assert "the binding it runs along, named in the legend (M.lr)" in section
    text = svg.read_text()  # text kept as text: the floor's label and each point's variant label
    assert "truth floor" in text and all(v in text for v in VARIANTS)


def test_the_tradeoff_points_are_the_means_of_the_records(built, tmp_path):
    recs, rep = built
    trials = collect(rep.parent / "runs", ["dyn"], with_curves=False).trials
    points = temporal.section(trials, tmp_path)["tradeoff_points"]
    assert points["variant"].tolist() == list(VARIANTS) and (points["scene"] == "s0").all()
    for (_, row), group in zip(points.iterrows(), (recs[:2], recs[2:])):  # two seeds per variant, in order
        ms = [rec.metrics() for rec in group]
        assert row["n"] == 2
        for key, values in (("warp_error", [m["temporal"]["flicker"]["warp_error"] for m in ms]),
                            ("warp_error_truth", [m["temporal"]["flicker"]["warp_error_truth"] for m in ms]),
                            ("psnr", [m["psnr"] for m in ms])):
            mean, half, _ = t_interval(values)
            assert row[key] == pytest.approx(mean, rel=1e-12) and row[f"{key}_ci"] == pytest.approx(half, rel=1e-12)
    assert temporal.variant_bindings(trials) == {v: {"M.lr": lr, "experiment": "dyn"}
                                                 for v, lr in zip(VARIANTS, (0.1, 0.2))}
    assert temporal.tradeoff_lines(temporal.variant_bindings(trials)) == [("M.lr", "along M.lr", list(VARIANTS))]


def test_one_seed_gives_points_without_intervals():
    flicker = pd.DataFrame({"scene": ["s", "s"], "variant": ["a", "b"], "warp_error": [0.002, 0.003],
                            "warp_error_truth": [0.001, 0.001], "psnr": [25.0, 27.0]})
    points = temporal.tradeoff_points(flicker, ["b", "a", "c"])
    assert points["variant"].tolist() == ["b", "a"] and points["n"].tolist() == [1, 1]
    assert points["warp_error"].tolist() == [0.003, 0.002] and points["psnr"].tolist() == [27.0, 25.0]
    assert points["warp_error_ci"].isna().all() and points["psnr_ci"].isna().all()
    assert temporal.tradeoff_points(pd.DataFrame(), ["a"]).empty


W_FLOW, W_FEAT = "FlowConsistency.weight", "FeatureTemporal.weight"
# the zipped sweep of runs/plenoxels_temporal: (flow, feature) weights; bindings in the records' order
ZIPPED = [(0.0, 0.0), (0.1, 0.0), (0.3, 0.0), (1.0, 0.0), (3.0, 0.0), (0.0, 1e-4), (0.0, 1e-3)]
ZIPPED_VARIANTS = {f"FeatureTemporal.weight={g:g}, FlowConsistency.weight={f:g}": {W_FEAT: g, W_FLOW: f,
                                                                                     "experiment": "e"}
                   for f, g in ZIPPED}


def test_tradeoff_lines_join_one_numeric_axis_in_the_order_of_its_value():
    weights = {"w=1": 1, "w=0": 0, "w=3": 3, "w=0.1": 0.1, "w=0.3": 0.3}  # not in value order
    assert temporal.tradeoff_lines({v: {W_FLOW: w, "experiment": "e"} for v, w in weights.items()}) == \
        [(W_FLOW, f"along {W_FLOW}", ["w=0", "w=0.1", "w=0.3", "w=1", "w=3"])]
    # a grid: a line per value of the other binding, along the first axis only (not a mesh of both)
    grid = {f"{a},{b}": {W_FLOW: a, "M.lr": b} for b in (0.01, 0.1) for a in (1.0, 0.0)}
    assert temporal.tradeoff_lines(grid) == [(W_FLOW, f"along {W_FLOW}, lr=0.01", ["0.0,0.01", "1.0,0.01"]),
                                             (W_FLOW, f"along {W_FLOW}, lr=0.1", ["0.0,0.1", "1.0,0.1"])]
    # a part of a grid whose lines still cross at several variants: the first axis only
    part = {f"{a},{b}": {W_FLOW: a, "M.lr": b} for a, b in [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1)]}
    assert [line.axis for line in temporal.tradeoff_lines(part)] == [W_FLOW, W_FLOW]
    # a categorical binding only separates the lines
    mixed = {"a0": {"M.kind": "a", W_FLOW: 0}, "a1": {"M.kind": "a", W_FLOW: 1}, "b1": {"M.kind": "b", W_FLOW: 1}}
    assert temporal.tradeoff_lines(mixed) == [(W_FLOW, f"along {W_FLOW}", ["a0", "a1"])]


def test_tradeoff_lines_of_a_zipped_sweep_share_the_reference_point():
    lines = temporal.tradeoff_lines(ZIPPED_VARIANTS)
    names = list(ZIPPED_VARIANTS)
    assert lines == [(W_FEAT, f"along {W_FEAT}", [names[0], names[5], names[6]]),  # in the order of each weight
                     (W_FLOW, f"along {W_FLOW}", names[:5])]
    assert lines[0].members[0] == lines[1].members[0] == names[0]  # both through (0, 0)
    # the variants' order does not matter, nor where the reference lies along the weights
    assert temporal.tradeoff_lines(dict(reversed(ZIPPED_VARIANTS.items()))) == lines
    star = {f"{a},{b}": {"M.lr": a, W_FLOW: b} for a, b in [(1, 1), (0.5, 1), (2, 1), (1, 0.5), (1, 2)]}
    assert temporal.tradeoff_lines(star) == [("M.lr", "along M.lr", ["0.5,1", "1,1", "2,1"]),
                                             (W_FLOW, f"along {W_FLOW}", ["1,0.5", "1,1", "1,2"])]
    # one such sweep per kind: every line, told apart by the values they share
    kinds = {f"{k}{f},{g}": {"M.kind": k, W_FEAT: g, W_FLOW: f} for k in "ab" for f, g in ZIPPED[:3] + ZIPPED[5:6]}
    assert [line.label for line in temporal.tradeoff_lines(kinds)] == [
        f"along {W_FEAT}, kind=a, {W_FLOW}=0", f"along {W_FEAT}, kind=b, {W_FLOW}=0",
        f"along {W_FLOW}, kind=a, {W_FEAT}=0", f"along {W_FLOW}, kind=b, {W_FEAT}=0"]


def test_tradeoff_lines_of_a_sweep_zipping_two_bindings_and_the_ambiguous_cases():
    zipped = {f"z{i}": {W_FLOW: f, W_FEAT: g} for i, (f, g) in enumerate([(1, 0.5), (0, 0), (3, 2)])}
    assert temporal.tradeoff_lines(zipped) == [(W_FLOW, f"along {W_FLOW} and {W_FEAT}", ["z1", "z0", "z2"])]
    crossed = {f"z{i}": {W_FLOW: f, W_FEAT: g} for i, (f, g) in enumerate([(1, 2), (0, 0), (3, 0.5)])}
    assert temporal.tradeoff_lines(crossed) == []  # the two weights order them differently
    assert temporal.tradeoff_lines({"a": {"M.kind": "a"}, "b": {"M.kind": "b"}}) == []
    assert temporal.tradeoff_lines({"a": {W_FLOW: 0}, "b": {}}) == []  # a variant without the binding
    assert temporal.tradeoff_lines({"a": {W_FLOW: 0, "x": 1}, "b": {W_FLOW: 0, "x": 2}}) == [("x", "along x",
                                                                                             ["a", "b"])]
    assert temporal.tradeoff_lines({"a": {W_FLOW: True}, "b": {W_FLOW: False}}) == []  # not a number
    two_at_one = {"a": {W_FLOW: 1, "M.kind": "x"}, "b": {W_FLOW: 1, "M.kind": "x", "M.other": 1},
                  "c": {W_FLOW: 2, "M.kind": "x", "M.other": 1}}
    assert [line.axis for line in temporal.tradeoff_lines(two_at_one)] == [W_FLOW]
    assert temporal.tradeoff_lines({"only": {W_FLOW: 1}}) == []
    assert temporal.tradeoff_lines({}) == []


def test_variant_labels_name_what_differs_from_the_first_variant():
    names = list(ZIPPED_VARIANTS)
    labels = temporal.variant_labels(ZIPPED_VARIANTS, names)
    assert list(labels.values()) == [
        "FeatureTemporal.weight=0, FlowConsistency.weight=0",  # the reference: all that varies
        "FlowConsistency.weight=0.1", "FlowConsistency.weight=0.3", "FlowConsistency.weight=1",
        "FlowConsistency.weight=3", "FeatureTemporal.weight=0.0001", "FeatureTemporal.weight=0.001"]
    assert list(labels) == names
    # the reference is the first of `variants`; short names where they are unambiguous; the experiment by name
    two = {"x": {"M.lr": 0.1, "M.n": 4, "experiment": "e1"}, "y": {"M.lr": 0.2, "M.n": 4, "experiment": "e1"},
           "z": {"M.lr": 0.2, "M.n": 4, "experiment": "e2"}, "w": {"M.n": 4, "experiment": "e1"}}
    assert temporal.variant_labels(two, ["y", "x", "z", "w", "gone"]) == {
        "y": "e1, lr=0.2", "x": "lr=0.1", "z": "e2", "w": "lr=default", "gone": "gone"}
    assert temporal.variant_labels({"a": {"M.lr": 1}}, ["a"]) == {"a": "a"}  # nothing varies: the name
    same = {"a": {"M.lr": 1.0}, "b": {"M.lr": 1}, "c": {"M.lr": 2}}  # b reads like a: nothing to show, its name
    assert temporal.variant_labels(same, ["a", "b", "c"]) == {"a": "lr=1", "b": "b", "c": "lr=2"}
    clash = {"a": {"M.lr": 1, "M.n": 1}, "b": {"M.lr": 2, "M.n": 1}, "c": {"M.lr": 2, "M.n": 2}}
    assert temporal.variant_labels(clash, ["a", "b", "c"]) == {"a": "lr=1, n=1", "b": "lr=2", "c": "lr=2, n=2"}
    twice = {"a": {"M.lr": 1}, "b": {"M.lr": 2}, "c": {"M.lr": 2.0}}  # b and c would read alike: their names
    assert temporal.variant_labels(twice, ["a", "b", "c"]) == {"a": "lr=1", "b": "b", "c": "c"}


def test_the_zipped_sweep_figures_show_both_lines_and_whole_labels(tmp_path):
    names = list(ZIPPED_VARIANTS)
    rng = np.random.default_rng(0)
    points = pd.DataFrame({"scene": "s", "variant": names, "n": 1, "warp_error": rng.uniform(5e-4, 2e-3, len(names)),
                           "psnr": rng.uniform(20, 25, len(names)), "warp_error_truth": 2.1e-3,
                           "warp_error_ci": np.nan, "psnr_ci": np.nan, "warp_error_truth_ci": np.nan})
    fig = temporal.tradeoff_figure(points, ZIPPED_VARIANTS, tmp_path)
    assert fig is not None and f"named in the legend ({W_FEAT}, {W_FLOW})" in fig.caption
    text = (tmp_path / "temporal_tradeoff.svg").read_text()
    labels = temporal.variant_labels(ZIPPED_VARIANTS, names)
    assert f"along {W_FLOW}" in text and f"along {W_FEAT}" in text
    assert all(label in text for label in labels.values())
    assert names[1] not in text  # the others by what differs from the first, not by their whole names
    steps = pd.DataFrame([{"scene": "s", "variant": v, "seed": 0, "time_step": t, "psnr": 20.0 + t + i}
                          for i, v in enumerate(names) for t in range(3)])
    temporal.step_curves(steps, names, tmp_path, labels)
    text = (tmp_path / "temporal_per_step.svg").read_text()
    assert all(label in text for label in labels.values()) and names[1] not in text


def test_a_static_experiment_has_no_dynamic_section(tmp_path):
    synthetic_experiment(tmp_path / "runs", "still", {"M.lr": [0.1, 0.2]}, seeds=(0,))
    out = build_report(["still"], tmp_path / "runs", tmp_path / "rep", bench_paths=[])
    html = out.read_text()
    assert "Dynamic scenes" not in html and 'id="temporal"' not in html
    assert not list((tmp_path / "rep").rglob("temporal_*"))  # neither the curves nor the trade-off figure
    assert not list((tmp_path / "rep").rglob("*.webp")) and not (tmp_path / "rep" / "temporal.csv").exists()
    assert temporal.section(pd.DataFrame({"state": ["done"], "dir": [str(tmp_path)], "key": ["k"]}), tmp_path) is None


def test_a_scene_without_flow_has_curves_and_animations_but_no_flicker(tmp_path):
    dynamic_experiment(tmp_path / "runs", flicker=False)
    out = build_report(["dyn"], tmp_path / "runs", tmp_path / "rep", bench_paths=[])
    html = out.read_text()
    assert "No flicker recorded: the split has no flow." in html
    assert 'class="flicker"' not in html and not (tmp_path / "rep" / "flicker.csv").exists()
    assert (tmp_path / "rep" / "assets" / "temporal_per_step.png").is_file()
    assert not list((tmp_path / "rep" / "assets").glob("temporal_tradeoff.*"))  # no flicker, nothing to plot
    assert len(list((tmp_path / "rep" / "assets").rglob("*.webp"))) == CAMERAS * len(VARIANTS)


def test_embedded_report_inlines_the_animations(tmp_path):
    dynamic_experiment(tmp_path / "runs")
    out = build_report(["dyn"], tmp_path / "runs", tmp_path / "rep", bench_paths=[], embed=True)
    html = out.read_text()
    assert html.count('<img src="data:image/webp;base64,') == CAMERAS * len(VARIANTS)
    assert "assets/" not in html and not (tmp_path / "rep" / "assets").exists()


def test_a_missing_render_leaves_out_its_camera_with_a_note(tmp_path):
    recs = dynamic_experiment(tmp_path / "runs")
    (recs[0].dir / "renders" / "test_t02_c01.png").unlink()
    out = build_report(["dyn"], tmp_path / "runs", tmp_path / "rep", bench_paths=[])
    assert "renders/test_t02_c01.png missing or unreadable" in out.read_text()
    shown = sorted(p.name for p in (tmp_path / "rep" / "assets" / "temporal_0").glob("*.webp"))
    assert shown == ["cam0_v0.webp", "cam0_v1.webp", "cam1_v1.webp"]
