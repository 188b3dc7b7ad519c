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


def test_a_static_experiment_has_no_dynamic_section(tmp_path):
    synthetic_experiment(tmp_path / "runs", "still", {"M.lr": [0.1, 0.2]}, seeds=(0,))
    out = build_report(["still"], tmp_path / "runs", tmp_path / "rep", bench_paths=[])
    html = out.read_text()
    assert "Dynamic scenes" not in html and 'id="temporal"' not in html
    assert not list((tmp_path / "rep").rglob("*.webp")) and not (tmp_path / "rep" / "temporal.csv").exists()
    assert temporal.section(pd.DataFrame({"state": ["done"], "dir": [str(tmp_path)], "key": ["k"]}), tmp_path) is None


def test_a_scene_without_flow_has_curves_and_animations_but_no_flicker(tmp_path):
    dynamic_experiment(tmp_path / "runs", flicker=False)
    out = build_report(["dyn"], tmp_path / "runs", tmp_path / "rep", bench_paths=[])
    html = out.read_text()
    assert "No flicker recorded: the split has no flow." in html
    assert 'class="flicker"' not in html and not (tmp_path / "rep" / "flicker.csv").exists()
    assert (tmp_path / "rep" / "assets" / "temporal_per_step.png").is_file()
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
