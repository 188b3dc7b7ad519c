"""`harness doctor` (harness/core/data/doctor.py): every check fires on a broken copy of a real scene,
the real scenes (lego, fern, street) pass clean, and a sweep's pre-flight stops on an error before
anything trains and keeps the warnings in the trial records."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import gin
import numpy as np
import pytest
from PIL import Image

from harness.core.data import doctor
from harness.core.data.formats import load_folder
from harness.core.data.llff import load_llff
from harness.core.data.procedural import make_procedural
from harness.core.data.scene import Scene, Split
from harness.core.records import read_json
from tests.conftest import ROOT, SHARED_DATA, TOY, harness
from tests.test_data_street import generate

LEGO = ROOT / "data" / "nerf_synthetic" / "lego_100"
FERN = next((p for p in (ROOT / "data" / "nerf_llff" / "fern", SHARED_DATA / "nerf_llff" / "fern") if p.is_dir()),
            None)


def check(root: Path, format: str | None = None) -> list[doctor.Finding]:
    """What `harness doctor FOLDER` finds."""
    scene, found = doctor.try_load(lambda: load_folder(root, format), str(root))
    return found + (doctor.diagnose(scene, root) if scene is not None else [])


def errors(found):
    return [f for f in found if f.severity == "error"]


def small_lego(dst: Path, counts=(("train", 6), ("test", 3))) -> Path:
    """A copy of lego_100 with the first frames of each split (quick to load)."""
    dst.mkdir(parents=True)
    for split, n in counts:
        meta = json.loads((LEGO / f"transforms_{split}.json").read_text())
        meta["frames"] = meta["frames"][:n]
        for f in meta["frames"]:
            (dst / f["file_path"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(LEGO / f"{f['file_path']}.png", dst / f"{f['file_path']}.png")
        (dst / f"transforms_{split}.json").write_text(json.dumps(meta))
    return dst


def edit(path: Path, change) -> None:
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


@pytest.fixture
def lego(tmp_path) -> Path:
    return small_lego(tmp_path / "lego")


@pytest.fixture(scope="module")
def street_source() -> Path:
    """The default procedural street scene (generated once, then cached in data/procedural/)."""
    gin.clear_config()
    return make_procedural("street")


@pytest.fixture
def street(street_source, tmp_path) -> Path:
    """A copy of the street scene without its depth maps (the checks do not read them)."""
    dst = tmp_path / "street"
    shutil.copytree(street_source, dst, ignore=shutil.ignore_patterns("depth"))
    edit(dst / "transforms.json", lambda m: [f.pop("depth_file_path", None) for f in m["frames"]])
    return dst


def lego_scene(tmp_path) -> Scene:
    return load_folder(small_lego(tmp_path / "mem"))


# ---- the real scenes pass clean --------------------------------------------------------------------------

def test_lego_passes_clean():
    found = doctor.diagnose(load_folder(LEGO), LEGO)
    assert found == [], [f.line() for f in found]


def test_street_passes_clean(street_source):
    from harness.core.data.nerfstudio import load_nerfstudio

    scene = load_nerfstudio(street_source, splits=("train", "test"), load_depth=False)
    assert scene.splits["train"].exposure is not None
    found = doctor.diagnose(scene, street_source)
    assert found == [], [f.line() for f in found]


@pytest.mark.skipif(FERN is None, reason=f"fern not found in data/nerf_llff nor {SHARED_DATA / 'nerf_llff'}")
def test_fern_passes_clean():
    """As plenoxels_fern loads it (downscale 8, NDC), and as a folder (no NDC: the box checks run)."""
    assert FERN is not None
    for ndc in (True, False):
        scene = load_llff(FERN, splits=("train", "test"), downscale_factor=8, ndc=ndc)
        found = doctor.diagnose(scene, FERN)
        assert errors(found) == [] and found == [], [f.line() for f in found]


# ---- broken copies: what the loader refuses is one error naming the file and frame -------------------------

def _flip(m):  # a mirrored camera: x axis negated, det -1
    m["frames"][3]["transform_matrix"] = [[-r[0], r[1], r[2], r[3]] if i < 3 else r
                                          for i, r in enumerate(m["frames"][3]["transform_matrix"])]


def _nan(m):
    m["frames"][3]["transform_matrix"][1][2] = float("nan")


def _skew(m):
    m["frames"][3]["transform_matrix"][0][:3] = [x * 1.2 for x in m["frames"][3]["transform_matrix"][0][:3]]


def _focal(m):
    m["camera_angle_x"] = 0


@pytest.mark.parametrize("change, says", [(_nan, "non-finite"), (_flip, "det=-1"), (_skew, "not rigid"),
                                          (_focal, "camera_angle_x")])
def test_a_broken_camera_file_is_one_error_naming_file_and_frame(lego, change, says):
    edit(lego / "transforms_train.json", change)
    found = check(lego)
    assert [f.check for f in found] == ["load"] and found[0].severity == "error"
    assert str(lego / "transforms_train.json") in found[0].where and says in found[0].line()
    if change is not _focal:
        assert "frame 3" in found[0].where


# ---- the doctor's own checks on the loaded scene -----------------------------------------------------------

def _only(found, check, severity="error"):
    assert [(f.check, f.severity) for f in found] == [(check, severity)], [f.line() for f in found]
    return found[0]


def test_pose_checks_on_a_scene(tmp_path):
    """The same pose tests on a Scene, for loaders and in-memory scenes that do not make them."""
    scene = lego_scene(tmp_path)
    c2w = scene.splits["train"].cameras.c2w
    c2w[1, 0, 1] = np.nan
    c2w[2, :, 0] *= -1  # flipped axis
    c2w[4, :, :3] *= 1.1  # not orthonormal
    found = [f for f in doctor.diagnose(scene) if f.check == "pose"]
    assert [(f.severity, f.where.split(" (")[0].rsplit(" ", 1)[-1]) for f in found] == [("error", "1"), ("error", "2"),
                                                                                          ("error", "4")]
    assert "non-finite" in found[0].message and "flipped axis" in found[1].message
    assert "not orthonormal" in found[2].message
    assert "transforms_train.json frame 2 (r_2)" in found[1].where


def test_principal_point_outside_the_image(street):
    edit(street / "transforms.json", lambda m: m["frames"][5].update(cx=-10.0))
    f = _only(check(street), "intrinsics")
    assert f.where.startswith(f"{street / 'transforms.json'} frame 5") and "principal point" in f.message


def test_non_positive_focal_on_a_scene(tmp_path):
    scene = lego_scene(tmp_path)
    scene.splits["test"].cameras.fx[1] = -50
    f = _only(doctor.diagnose(scene), "intrinsics")
    assert "transforms_test.json frame 1" in f.where and "focal" in f.message


def test_rays_that_are_not_finite(tmp_path):
    scene = lego_scene(tmp_path)
    cams = scene.splits["train"].cameras
    cams.fx[0] = cams.fy[0] = 1e-45  # positive, but the directions overflow
    assert "transforms_train.json frame 0" in _only(doctor.diagnose(scene), "rays").where


def test_ndc_rays_must_look_down_minus_z(tmp_path):
    scene = lego_scene(tmp_path)  # cameras all around the object: most do not face -z
    scene.ndc, scene.near, scene.far = True, 0.0, 1.0
    scene.extras["ndc"] = {"focal": 138.9, "width": 100, "height": 100, "near": 1.0}
    found = doctor.diagnose(scene)
    assert found and all(f.check == "rays" and "-z" in f.message for f in found)


def test_camera_looking_away_from_the_scene_box(lego):
    def away(m):  # turn camera 4 by 180 degrees about its own y axis: still a rotation, now facing outwards
        rows = m["frames"][4]["transform_matrix"]
        for r in rows[:3]:
            r[0], r[2] = -r[0], -r[2]
    edit(lego / "transforms_train.json", away)
    f = _only(check(lego), "bounds", "warning")
    assert "frame 4" in f.where and "does not see the scene box" in f.message


def test_near_far(tmp_path):
    scene = lego_scene(tmp_path)
    scene.near, scene.far = 0.5, 1.0  # lego's cameras are 4 from the centre of a box of half-size 1.5
    found = doctor.diagnose(scene)
    assert {(f.check, f.severity) for f in found} == {("bounds", "warning")} and len(found) == 9
    assert "outside near..far" in found[0].message
    scene.near, scene.far = 3.0, 2.0
    assert "near < far" in _only(doctor.diagnose(scene), "bounds").message


def test_image_values_outside_0_1_or_not_finite(tmp_path):
    scene = lego_scene(tmp_path)
    scene.splits["train"].images[1, 5, 5, 0] = np.nan
    scene.splits["test"].images[2, 0, 0, 1] = 1.5
    found = doctor.diagnose(scene)
    assert [(f.check, f.severity) for f in found] == [("images", "error")] * 2
    assert "non-finite" in found[0].message and str(Path("train") / "r_1.png") in found[0].where
    assert "outside [0, 1]" in found[1].message and "transforms_test.json frame 2" in found[1].where


def test_all_transparent_image_is_an_error_a_constant_one_a_warning(lego):
    Image.fromarray(np.zeros((100, 100, 4), np.uint8)).save(lego / "train" / "r_1.png")
    Image.fromarray(np.full((100, 100, 3), 128, np.uint8)).save(lego / "train" / "r_2.png")
    found = check(lego)
    assert [(f.check, f.severity) for f in found] == [("alpha", "error"), ("images", "warning")]
    assert found[0].where.startswith(str(lego / "train" / "r_1.png")) and "transparent" in found[0].message
    assert "frame 2" in found[1].where and "constant colour" in found[1].message


def test_duplicated_frame_is_a_warning(lego):
    edit(lego / "transforms_train.json", lambda m: m["frames"].append(dict(m["frames"][2])))
    f = _only(check(lego), "duplicates", "warning")
    assert "transforms_train.json frame 6 (r_2)" in f.where and "frame 2 (r_2)" in f.message


def test_test_frame_identical_to_a_train_frame_is_a_leak(lego):
    train = json.loads((lego / "transforms_train.json").read_text())["frames"]
    edit(lego / "transforms_test.json", lambda m: m["frames"].append(train[0]))
    f = _only(check(lego), "leak")
    assert f.where.startswith(f"{lego / 'transforms_test.json'} frame 3") and "train frame 0 (r_0)" in f.message


def test_same_image_under_another_pose_is_a_warning(lego):
    train = json.loads((lego / "transforms_train.json").read_text())["frames"]
    test = json.loads((lego / "transforms_test.json").read_text())["frames"]
    edit(lego / "transforms_test.json", lambda m: m["frames"].append({**train[0], "transform_matrix":
                                                                      test[0]["transform_matrix"]}))
    assert "another pose" in _only(check(lego), "leak", "warning").message


def test_exposure_missing_from_a_split(street):
    edit(street / "transforms.json",
         lambda m: [f.pop("exposure") for f in m["frames"] if f["split"] == "test"])
    f = _only(check(street), "metadata")
    assert f.where == str(street / "transforms.json") and "split 'test' has no 'exposure'" in f.message


def test_bad_exposure_or_appearance_values(street, tmp_path):
    """The loader refuses them in the file (one line naming the frame); the doctor on a Scene too."""
    edit(street / "transforms.json", lambda m: m["frames"][7].update(appearance_id=-1))
    f = _only(check(street), "load")
    assert f.where.startswith(f"{street / 'transforms.json'} frame 7") and "appearance_id" in f.where
    scene = lego_scene(tmp_path)
    for sp in scene.splits.values():
        sp.exposure = np.ones(len(sp), np.float32)
        sp.appearance_id = np.zeros(len(sp), np.int64)
    scene.splits["train"].exposure[2] = 0.0
    scene.splits["test"].appearance_id[1] = -3
    found = doctor.diagnose(scene)
    assert [(f.check, f.severity) for f in found] == [("metadata", "error")] * 2
    assert "frame 2" in found[0].where and "'exposure' = 0.0" in found[0].message
    assert "transforms_test.json frame 1" in found[1].where and "'appearance_id' = -3" in found[1].message


def test_appearance_id_no_train_frame_has(street):
    def unseen(m):
        next(f for f in m["frames"] if f["split"] == "test")["appearance_id"] = 9
    edit(street / "transforms.json", unseen)
    assert "appearance id 9" in _only(check(street), "metadata", "warning").message


# ---- dynamic scenes: time steps, the rig, flow -------------------------------------------------------------

DYNAMIC = {"size": 16, "n_steps": 3, "n_train": 2, "n_test": 1}  # frame 3 t + c; cameras 0, 1 train, 2 test


@pytest.fixture(scope="module")
def dynamic_source(tmp_path_factory) -> Path:
    """A small procedural dynamic scene: 3 steps of 3 cameras at 16x16, flow for steps 0 and 1."""
    return generate("dynamic", tmp_path_factory.mktemp("cache"), **DYNAMIC)


@pytest.fixture
def dynamic(dynamic_source, tmp_path) -> Path:
    dst = tmp_path / "dynamic"
    shutil.copytree(dynamic_source, dst)
    return dst


def test_dynamic_passes_clean_and_is_described(dynamic_source):
    scene = load_folder(dynamic_source)
    found = doctor.diagnose(scene, dynamic_source)
    assert found == [], [f.line() for f in found]
    assert doctor.describe(scene) == ("nerfstudio, train 6, test 3 images, 16x16, "
                                      "dynamic: 3 time steps, 3 cameras per step, flow yes")
    del scene.extras["flow"]  # as loaded at a downscale, or with load_flow=False: no flow checks
    assert doctor.diagnose(scene, dynamic_source) == []
    assert doctor.describe(scene).endswith(", dynamic: 3 time steps, 3 cameras per step, flow no")
    assert "dynamic" not in doctor.describe(load_folder(LEGO))


def test_a_time_step_without_a_training_view(dynamic, dynamic_source):
    """The loader refuses it in the file (one line naming a frame); the doctor on a Scene too, naming a frame of
    that step."""
    edit(dynamic / "transforms.json", lambda m: m.update(
        frames=[f for f in m["frames"] if not (f["split"] == "train" and f["time_step"] == 1)]))
    f = _only(check(dynamic), "load")
    assert "frame" in f.where and "time_step 1 has no training view" in f.message
    scene = load_folder(dynamic_source)
    keep = np.flatnonzero(scene.splits["train"].time_step != 1)
    scene.splits["train"] = scene.splits["train"].subset(keep)
    scene.extras["flow"]["train"] = scene.extras["flow"]["train"][keep]
    f = _only(doctor.diagnose(scene, dynamic_source), "time")
    assert f.where == f"{dynamic_source / 'transforms.json'} frame 5 (test_c02_t001)"
    assert f.message.startswith("time_step 1 has no training view")


def test_a_test_camera_missing_at_a_time_step_is_a_warning(dynamic):
    edit(dynamic / "transforms.json", lambda m: m["frames"].pop(5))  # test_c02_t001
    f = _only(check(dynamic), "time", "warning")
    assert f.where == f"{dynamic / 'transforms.json'} frame 2 (test_c02_t000)"
    assert f.message.startswith("test camera_id 2 has no frame at time_step 1 (of 0..2)") and "flicker" in f.message


def test_frames_without_flow_are_warnings(dynamic):
    """A frame before the last step without a flow file, or with one that is NaN everywhere, and a split without
    flow when another has it; the last step's frames have none by design."""
    def drop(m):
        m["frames"][3].pop("flow_file_path")  # train_c00_t001
        for f in m["frames"]:
            if f["split"] == "test":
                f.pop("flow_file_path", None)
    edit(dynamic / "transforms.json", drop)
    np.save(dynamic / "flow" / "train_c01_t000.npy", np.full((16, 16, 2), np.nan, np.float32))
    found = check(dynamic)
    assert [(f.check, f.severity) for f in found] == [("flow", "warning")] * 3, [f.line() for f in found]
    assert found[0].where == f"{dynamic / 'transforms.json'} frame 1 (train_c01_t000)"
    assert found[0].message.startswith("no flow to time_step 1 (no flow file, or NaN everywhere)")
    assert found[1].where == f"{dynamic / 'transforms.json'} frame 3 (train_c00_t001)"
    assert "to time_step 2" in found[1].message
    assert found[2].where == str(dynamic / "transforms.json")
    assert found[2].message == "split 'test' has no flow, split(s) train have it"


def test_dynamic_fields_on_a_scene(dynamic_source):
    """In-memory scenes: time_step in every split or none, flow of the split's shape."""
    scene = load_folder(dynamic_source)
    scene.extras["flow"]["test"] = scene.extras["flow"]["test"][:, :8]
    f = _only(doctor.diagnose(scene, dynamic_source), "flow")
    assert f.where == str(dynamic_source / "transforms.json") and "(3, 8, 16, 2)" in f.message
    scene = load_folder(dynamic_source)
    scene.splits["test"].time_step = None
    f = _only(doctor.diagnose(scene, dynamic_source), "metadata")
    assert "split 'test' has no 'time_step', split(s) train have it" in f.message


def test_errors_message_lists_the_first_few():
    found = [doctor.Finding("error", "pose", f"t.json frame {i}", "bad") for i in range(8)]
    found.append(doctor.Finding("warning", "duplicates", "t.json frame 9", "dup"))
    text = doctor.errors_message(found, limit=3)
    assert text.splitlines() == ["t.json frame 0: bad", "t.json frame 1: bad", "t.json frame 2: bad",
                                 "... and 5 more (python -m harness doctor lists them all)"]
    assert doctor.summary(found) == "8 errors, 1 warning"


def test_a_thousand_images_are_checked_in_seconds():
    """1,000 views of 100x100 (random images, lego's cameras repeated): the checks alone."""
    cams = load_folder(LEGO).splits["test"].cameras
    rng = np.random.default_rng(0)
    n = 1000
    index = np.arange(n) % len(cams)
    split = Split(rng.random((n, 100, 100, 3), dtype=np.float32), cams.subset(index),
                  [f"v{i}" for i in range(n)])
    scene = Scene("big", "big", "blender", {"train": split}, np.ones(3, np.float32), 2.0, 6.0,
                  np.array([[-1.5] * 3, [1.5] * 3], np.float32))
    t0 = time.perf_counter()
    assert doctor.diagnose(scene) == []
    assert time.perf_counter() - t0 < 10.0


# ---- command line and sweep pre-flight ------------------------------------------------------------------

def _experiment(tmp_path: Path, scene: Path) -> Path:
    exp = tmp_path / "doc.gin"
    exp.write_text(TOY.read_text() + f"load_scene.path = '{scene}'\nSweep.axes = {{}}\nSweep.seeds = [0]\n")
    return exp


def test_sweep_over_a_broken_scene_stops_before_training(lego, tmp_path):
    train = json.loads((lego / "transforms_train.json").read_text())["frames"]
    edit(lego / "transforms_test.json", lambda m: m["frames"].append(train[0]))
    runs = tmp_path / "runs"
    proc = harness("sweep", _experiment(tmp_path, lego), "--runs-dir", runs)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{lego / 'transforms_test.json'} frame 3 (r_0)" in lines[0] and "train frame 0" in lines[0]
    assert not list(runs.glob("**/status.json"))  # no trial was made, let alone trained


def test_warnings_go_into_the_trial_records_and_doctor_lists_them(lego, tmp_path):
    from harness.run.driver import run_sweep

    edit(lego / "transforms_train.json", lambda m: m["frames"].append(dict(m["frames"][2])))
    exp = _experiment(tmp_path, lego)
    runs = tmp_path / "runs"
    assert set(run_sweep(str(exp), [], runs, {"threads": 1}).values()) == {"done"}
    (status,) = [read_json(p) for p in (runs / "doc").glob("*/status.json")]
    assert status["state"] == "done"
    assert len(status["data_warnings"]) == 1 and "transforms_train.json frame 6 (r_2)" in status["data_warnings"][0]
    proc = harness("doctor", exp)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "0 errors, 1 warning"
    assert "warning [duplicates]" in proc.stdout


def test_doctor_command_exit_code_on_a_broken_folder(lego):
    edit(lego / "transforms_train.json", _flip)
    proc = harness("doctor", lego)
    assert proc.returncode == 2, proc.stderr
    out = proc.stdout.splitlines()
    assert out[-1] == "1 error, 0 warnings" and "error [load]" in out[-2] and "frame 3" in out[-2]
