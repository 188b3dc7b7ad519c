"""Reliability 6: bad input gives one clear line naming the file, key or value, and loses nothing
already computed. (More data cases live in tests/test_data_errors.py, test_cli.py and test_sweep.py;
docs/reliability.md lists which test covers which input.)"""

import hashlib
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from harness.core.data.blender import load_blender
from harness.core.data.nerfstudio import load_nerfstudio
from harness.core.errors import ConfigError, DataError, HarnessError
from harness.run import sweep
from harness.run.driver import run_sweep
from tests.conftest import harness
from tests.reliability_tools import write_experiment


def _one_line(exc_type, match, fn, *args):
    with pytest.raises(exc_type, match=match) as info:
        fn(*args)
    assert "\n" not in str(info.value), str(info.value)
    return str(info.value)


# --- Gin files and sweeps -------------------------------------------------------------------------

@pytest.mark.parametrize("text, match", [
    ("ToyColour.lr = [1,\n", r"bad\.gin.*syntax error"),
    ("ToyColour.lr = = 3\n", r"bad\.gin, line 14: Gin syntax error"),
    ("Nope.x = 1\n", r"bad\.gin.*No configurable matching 'Nope'.*line 14"),
    ("ToyColour.no_such = 1\n", r"bad\.gin.*'no_such'.*line 14"),
    ("Trainer.iterations = 'many'\n", r"bad\.gin, trial .*: Trainer\.iterations = 'many': expected an integer >= 0"),
    ("Trainer.checkpoint_every = 0\n", r"Trainer\.checkpoint_every = 0: expected an integer >= 1"),
    ("Trainer.validation_views = 3\n", r"Trainer\.validation_views = 3: expected a list of view indices"),
    ("Trainer.method = 'ToyColour'\n", r"Trainer\.method = 'ToyColour': expected a configurable reference"),
    ("Sweep.axes = {'Trainer.log_every': [5, 'x']}\n",
     r"bad\.gin, trial \{'Trainer\.log_every': 'x', 'seed': 0\}: Trainer\.log_every = 'x': expected an integer >= 1"),
    ("Sweep.seeds = 5\n", r"bad\.gin: Sweep\.seeds = 5: expected a list"),
    ("Sweep.axes = ['ToyColour.lr']\n", r"Sweep\.axes = \['ToyColour\.lr'\]: expected a dict"),
    ("Sweep.axes = {'ToyColour.lr = 1\\nimport os\\nx': [1]}\n", r"Sweep\.axes key .*: expected a binding name"),
    ("Sweep.scenes = 'lego_100'\n", r"Sweep\.scenes = 'lego_100': expected a list"),
    ("Sweep.scenes = ['../../etc/x']\n", r"Sweep\.scenes entry '\.\./\.\./etc/x'"),
    ("Sweep.scenes = ['no_such_scene']\n", r"base/scenes/no_such_scene\.gin"),
    ("Sweep.axes = {'ToyColour.lr': []}\n", r"Sweep axis 'ToyColour\.lr' must be a non-empty list"),
    ("Sweep.seeds = []\n", r"Sweep\.seeds is empty"),
    # a method's positive settings (issue 21: a negative lr used to fail only inside the job, after queueing)
    ("Sweep.axes = {'ToyColour.lr': [0.1, -0.1]}\n",
     r"bad\.gin, trial \{'ToyColour\.lr': -0\.1, 'seed': 0\}: ToyColour\.lr = -0\.1: expected a positive number"),
    ("ToyColour.lr = 0\n", r"ToyColour\.lr = 0: expected a positive number"),
    ("ToyColour.lr = 1e999\n", r"ToyColour\.lr = inf: expected a positive number"),
    ("ToyColour.batch_size = 'many'\n", r"ToyColour\.batch_size = 'many': expected a positive number"),
    # a binding Gin would silently ignore: a part that no reference makes the trial use
    ("import baselines.plenoxels\nSparsity.weight = 0.1\n",
     r"bad\.gin: Sparsity\.weight is bound but no trial uses Sparsity: no reference @Sparsity\(\)"),
], ids=lambda v: v if not v.endswith("\n") else None)
def test_bad_experiment_files_give_one_line(tiny_scene, tmp_path, text, match):
    exp = write_experiment(tmp_path, tiny_scene, text, name="bad")
    assert len(exp.read_text().splitlines()) == 13 + text.count("\n")  # line 14 is the first bad one
    _one_line(ConfigError, match, sweep.expand, str(exp))


def test_bad_input_loses_nothing_already_computed(tiny_scene, tmp_path):
    """A finished sweep, then the same experiment with a bad setting, then a sweep with a scene with a
    broken image: the error is one line (the broken scene stops the sweep in its pre-flight, before any
    trial runs), the finished trials' files stay byte for byte, and once fixed the rest runs."""
    good = tmp_path / "good"
    shutil.copytree(tiny_scene, good)
    bad = tmp_path / "broken"
    shutil.copytree(tiny_scene, bad)
    png = bad / "images" / "train_003.png"
    png.write_text("not an image\n")
    runs = tmp_path / "runs"
    exp = write_experiment(tmp_path, good, "Sweep.axes = {'ToyColour.lr': [0.01, 0.1]}\n")
    assert set(run_sweep(str(exp), [], runs, {"threads": 1}).values()) == {"done"}
    before = _snapshot(runs)

    proc = harness("sweep", exp, "--runs-dir", runs, "--bind", "Trainer.iterations = 'many'")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    [line] = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert "Trainer.iterations = 'many': expected an integer" in line and "rel.gin" in line
    assert _snapshot(runs) == before

    exp = write_experiment(tmp_path, good, f"Sweep.axes = {{'ToyColour.lr': [0.01, 0.1], "
                                           f"'load_scene.path': ['{good}', '{bad}']}}\n")
    _one_line(DataError, f"{png}: unreadable image", run_sweep, str(exp), [], runs, {"threads": 1})
    assert _snapshot(runs) == before and len({s["trial_id"] for s in _statuses(runs)}) == 2  # nothing made

    Image.new("RGB", (16, 16), (200, 10, 10)).save(png)  # fixed
    outcome = run_sweep(str(exp), [], runs, {"threads": 1})
    assert set(outcome.values()) == {"done"}
    assert {k: v for k, v in _snapshot(runs).items() if k in before} == before
    # the good trials are not run again (same ids: same computation), the fixed scene's are trained once each
    statuses = {s["trial_id"]: s for s in _statuses(runs)}
    assert len(statuses) == 4 and sorted(s["attempts"] for s in statuses.values()) == [1] * 4


def _snapshot(runs):
    """Hashes of every computed file (not status.json: its 'updated' may change; not sweep.json)."""
    files = [p for p in runs.rglob("*") if p.is_file() and ".submitit" not in p.parts
             and p.name not in ("status.json", "sweep.json", "lock", "progress.json")]
    return {str(p.relative_to(runs)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _statuses(runs):
    return [json.loads(p.read_text()) for p in runs.glob("*/*/status.json")]


# --- scene files (Blender format here; nerfstudio, LLFF, COLMAP in tests/test_data_errors.py) ------

def _blender(root):
    """A 2 + 1 view Blender scene of 8x8 RGBA images."""
    root.mkdir()
    pose = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4], [0, 0, 0, 1]]
    for split, n in (("train", 2), ("test", 1)):
        frames = []
        for i in range(n):
            Image.new("RGBA", (8, 8), (i * 50, 0, 0, 255)).save(root / f"{split}_{i}.png")
            frames.append({"file_path": f"./{split}_{i}", "transform_matrix": pose})
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": 0.7, "frames": frames}))
    return root


def _edit(root, split, change):
    path = root / f"transforms_{split}.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def _pose(value):
    return lambda m: m["frames"][1].__setitem__("transform_matrix", value)


ZERO = [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 4], [0, 0, 0, 1]]
NAN = [[1, 0, 0, float("nan")], [0, 1, 0, 0], [0, 0, 1, 4], [0, 0, 0, 1]]


@pytest.mark.parametrize("break_it, match", [
    (lambda r: (r / "train_1.png").write_text("not a png"), r"train_1\.png: unreadable image"),
    (lambda r: (r / "train_1.png").write_bytes((r / "train_1.png").read_bytes()[:40]),
     r"train_1\.png: unreadable image"),
    (lambda r: Image.new("RGBA", (8, 6)).save(r / "train_1.png"),
     r"train_1\.png: image is 8x6, but scene/ \(other frames\) says 8x8"),
    (lambda r: (r / "test_0.png").unlink(), r"test_0\.png: image file is missing"),
    (lambda r: _edit(r, "train", lambda m: m.pop("camera_angle_x")),
     r"transforms_train\.json: missing required key 'camera_angle_x'"),
    (lambda r: _edit(r, "train", lambda m: m.__setitem__("camera_angle_x", float("inf"))),
     r"transforms_train\.json camera_angle_x: expected a positive finite number, got inf"),
    (lambda r: _edit(r, "train", lambda m: m["frames"][1].pop("transform_matrix")),
     r"transforms_train\.json frame 1: missing required key 'transform_matrix'"),
    (lambda r: _edit(r, "train", _pose(ZERO)), r"transforms_train\.json frame 1: camera pose is not rigid .*det=0"),
    (lambda r: _edit(r, "train", _pose(NAN)), r"transforms_train\.json frame 1: camera pose has non-finite values"),
    (lambda r: _edit(r, "train", _pose([[1, 0, 0], [0, 1, 0]])),
     r"transforms_train\.json frame 1 transform_matrix: expected a 4x4 matrix"),
    (lambda r: (r / "transforms_test.json").write_text('{"frames": ['), r"transforms_test\.json: not valid JSON"),
], ids=["non-image", "truncated", "wrong-size", "missing-image", "missing-key", "non-finite-fov", "missing-pose",
        "singular", "non-finite-pose", "pose-shape", "bad-json"])
def test_bad_blender_scene_gives_one_line(tmp_path, break_it, match):
    root = _blender(tmp_path / "scene")
    assert load_blender(root).split("train").images.shape == (2, 8, 8, 3)
    break_it(root)
    _one_line(DataError, match, load_blender, root)


@pytest.mark.parametrize("matrix, match", [(ZERO, "not rigid"), (NAN, "non-finite")], ids=["singular", "non-finite"])
def test_singular_or_non_finite_nerfstudio_pose(tiny_scene, tmp_path, matrix, match):
    root = tmp_path / "scene"
    shutil.copytree(tiny_scene, root)
    meta = json.loads((root / "transforms.json").read_text())
    meta["frames"][2]["transform_matrix"] = matrix
    (root / "transforms.json").write_text(json.dumps(meta))
    _one_line(DataError, rf"transforms\.json frame 2: camera pose (is|has) {match}", load_nerfstudio, root)


def test_non_image_png_in_nerfstudio_scene(tiny_scene, tmp_path):
    root = tmp_path / "scene"
    shutil.copytree(tiny_scene, root)
    (root / "images" / "train_001.png").write_bytes(b"GIF89a not really")
    _one_line(DataError, r"train_001\.png: unreadable image", load_nerfstudio, root)


def test_errors_are_harness_errors():
    assert issubclass(ConfigError, HarnessError) and issubclass(DataError, HarnessError)
    assert np  # numpy imported for the scene helpers' sake
