"""The procedural street scene: repeatable renders, exposure, splits, depth against the ray caster."""

import json
import time

import gin
import numpy as np
import pytest

from harness.core.data.nerfstudio import load_nerfstudio
from harness.core.data.procedural import make_procedural
from harness.core.data.procedural.raycast import signed_distance
from harness.core.data.procedural.shading import srgb_decode
from harness.core.data.procedural.street import build_street, street_scene
from harness.core.data.procedural.views import render_view
from harness.core.data.rays import image_rays

SMALL = {"n_images": 24, "width": 48, "height": 32}


def generate(kind: str, cache, **params):
    """Generate a procedural scene with Gin bindings for its parameters, leaving Gin clean."""
    gin.clear_config()
    gin.parse_config([f"{kind}_scene.{k} = {v!r}" for k, v in params.items()])
    try:
        return make_procedural(kind, cache_dir=cache)
    finally:
        gin.clear_config()


@pytest.fixture(scope="module")
def street_dir(tmp_path_factory):
    return generate("street", tmp_path_factory.mktemp("cache"), **SMALL)


@pytest.fixture(scope="module")
def street(street_dir):
    return load_nerfstudio(street_dir, splits=("train", "test"))


def test_default_street_layout_meets_the_spec():
    scene = build_street(street_scene())  # building only: no rendering
    assert len(scene.names) == 200 and (scene.cameras.width, scene.cameras.height) == (96, 64)
    assert len(scene.metadata["blocks"]) >= 4 and len(scene.conditions) >= 3
    assert len(np.unique(scene.condition)) >= 3
    assert len(np.unique(np.round(scene.cameras.c2w[:, 2, 3], 3))) >= 2  # several camera heights
    forward = -scene.cameras.c2w[:, :2, 2]
    headings = np.degrees(np.arctan2(forward[:, 1], forward[:, 0]))
    assert np.ptp(headings[scene.condition == 0]) > 30 and (headings > 90).any() and (np.abs(headings) < 90).any()
    assert 0.5 <= scene.exposure.min() and scene.exposure.max() <= 2.0 and np.ptp(scene.exposure) > 0.5
    street_length = np.ptp(scene.cameras.c2w[:, 0, 3])
    assert street_length > 3 * 30  # the drive covers the blocks


def test_conditions_are_captured_in_both_directions_by_separate_drives():
    """A condition must not be recognisable from the heading (else a model without appearance codes
    learns it from the view direction); each drive is one sequence with one condition and heading."""
    scene = build_street(street_scene())
    heading_x = -scene.cameras.c2w[:, 0, 2]  # camera looks along -z: its x component gives the direction
    for c in np.unique(scene.condition):
        assert ((heading_x[scene.condition == c] > 0.3).sum() >= 20
                and (heading_x[scene.condition == c] < -0.3).sum() >= 20)
    assert len(np.unique(scene.sequence)) == 6
    for d in np.unique(scene.sequence):
        one = scene.sequence == d
        assert len(np.unique(scene.condition[one])) == 1
        assert (heading_x[one] > 0).all() or (heading_x[one] < 0).all()


def test_sequence_ids_are_saved_and_loaded(street_dir, street):
    frames = json.loads((street_dir / "transforms.json").read_text())["frames"]
    by_name = {f["file_path"].split("/")[-1][:-4]: f["sequence_id"] for f in frames}
    for split in street.splits.values():
        assert split.sequence_id is not None
        assert [by_name[n] for n in split.names] == split.sequence_id.tolist()


def test_render_is_bit_identical_and_generation_repeatable(tmp_path, street_dir):
    scene = build_street(street_scene(**SMALL))
    a, b = render_view(scene, 5), render_view(scene, 5)
    for key in a:
        assert np.array_equal(a[key], b[key])
    again = generate("street", tmp_path, **SMALL)
    assert again.name == street_dir.name  # same parameters, same cache key
    for path in sorted(street_dir.rglob("*")):
        if path.is_file():
            assert path.read_bytes() == (again / path.relative_to(street_dir)).read_bytes(), path.name


def test_exposure_scales_linear_radiance():
    scene = build_street(street_scene(**SMALL))
    low, high = render_view(scene, 3, exposure=0.7), render_view(scene, 3, exposure=1.3)
    np.testing.assert_allclose(high["linear"], low["linear"] * (1.3 / 0.7), rtol=1e-12)
    unclipped = high["linear"] < 1
    np.testing.assert_allclose(srgb_decode(high["rgb"])[unclipped], high["linear"][unclipped], atol=1e-12)
    assert not np.array_equal(low["rgb"], high["rgb"])


def test_saved_images_carry_their_exposure(street):
    scene = build_street(street_scene(**SMALL))
    split = street.splits["train"]
    for k in (0, 7):
        index = scene.names.index(split.names[k])
        base = render_view(scene, index, exposure=1.0)["linear"]
        decoded = srgb_decode(split.images[k].astype(np.float64))
        ok = base * split.exposure[k] < 0.95  # away from clipping
        # one 8-bit step of sRGB is at most ~1.3% of linear radiance above 0.05
        bright = ok & (base * split.exposure[k] > 0.05)
        np.testing.assert_allclose(decoded[bright] / split.exposure[k], base[bright], rtol=0.03)


def test_splits_are_disjoint_with_conditions_and_blocks(street):
    train, test = street.splits["train"], street.splits["test"]
    assert len(test) == 3 and len(train) == 21  # every 8th of 24
    assert not set(train.names) & set(test.names)
    centres = lambda s: {tuple(np.round(c, 4)) for c in s.cameras.c2w[:, :, 3]}  # noqa: E731
    assert not centres(train) & centres(test)
    assert len(np.unique(np.concatenate([train.appearance_id, test.appearance_id]))) == 3
    assert train.exposure.dtype == np.float32 and ((train.exposure >= 0.5) & (train.exposure <= 2)).all()
    centres_x = [b["center"][0] for b in street.extras["blocks"]]
    assert len(centres_x) == 4 and np.allclose(np.diff(centres_x), centres_x[1] - centres_x[0])


def test_depth_lands_on_a_surface_of_the_ray_caster(street_dir, street):
    params = json.loads((street_dir / "params.json").read_text())["params"]
    shapes = build_street(params).shapes
    split = street.splits["test"]
    for k in range(len(split)):
        o, d = (x.numpy().astype(np.float64) for x in image_rays(split.cameras, k))
        depth = street.extras["depth"]["test"][k].reshape(-1).astype(np.float64)
        hit = np.isfinite(depth)
        assert hit.mean() > 0.5 and (d[~hit, 2] > 0).all()  # misses look up into the sky
        points = o[hit] + depth[hit, None] * d[hit]
        assert np.abs(signed_distance(points, shapes)).max() < 1e-4 * depth[hit].max() + 1e-5
        before = o[hit] + 0.97 * depth[hit, None] * d[hit]
        assert signed_distance(before, shapes).min() > 0  # nothing nearer along the ray


@pytest.mark.slow
def test_default_street_generates_within_a_minute(tmp_path):
    start = time.perf_counter()
    folder = generate("street", tmp_path)
    assert time.perf_counter() - start < 60
    assert len(list((folder / "images").glob("*.png"))) == 200


def test_render_split_reads_like_the_written_images(street_dir, street):
    """render_split (views never written, e.g. novel views) quantises exactly as the saved PNGs load."""
    from harness.core.data.procedural.views import render_split

    scene = build_street(street_scene(**SMALL))
    split = render_split(scene)
    test = street.split("test")
    idx = [i for i, s in enumerate(scene.splits) if s == "test"]
    np.testing.assert_array_equal(split.images[idx], test.images)
    np.testing.assert_allclose(split.exposure[idx], test.exposure)
    np.testing.assert_array_equal(split.appearance_id[idx], test.appearance_id)
    np.testing.assert_array_equal(split.sequence_id[idx], test.sequence_id)


def test_novel_street_views_are_new_cameras_on_the_same_street():
    from harness.core.data.procedural.street import street_views

    p = street_scene(**SMALL)
    own = build_street(p)
    a, b, again = street_views(p, 30, seed=5), street_views(p, 30, seed=6), street_views(p, 30, seed=5)
    np.testing.assert_array_equal(a.cameras.c2w, again.cameras.c2w)  # deterministic in the seed
    assert not np.allclose(a.cameras.c2w, b.cameras.c2w)
    assert a.shapes is not None and len(a.materials) == len(own.materials)  # the same buildings
    assert len(a.names) == 30 and set(a.splits) == {"test"} and a.names[0].startswith("novel_")
    # drawn like the street's own cameras: every condition and drive, both headings, along the whole street
    assert set(np.unique(a.condition)) == set(np.unique(own.condition))
    assert set(np.unique(a.sequence)) == set(np.unique(own.sequence))
    assert (a.cameras.fx == own.cameras.fx[0]).all() and a.cameras.width == own.cameras.width
    x = a.cameras.c2w[:, 0, 3]
    assert x.min() < own.cameras.c2w[:, 0, 3].min() + 10 and x.max() > own.cameras.c2w[:, 0, 3].max() - 10
    # no novel camera coincides with one of the street's own
    d = np.linalg.norm(a.cameras.c2w[:, None, :, 3] - own.cameras.c2w[None, :, :, 3], axis=-1)
    assert d.min() > 1e-3
    with pytest.raises(Exception, match="n_images"):
        street_views(p, 2, seed=0)
