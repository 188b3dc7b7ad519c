"""Writing a procedural scene as a nerfstudio folder (images/, depth/, transforms.json, params.json; masks/
when the scene has transient objects: nerfstudio masks, 255 = static pixel, 0 = transient)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from harness.core.data.procedural.views import ProceduralScene, render_view
from harness.core.metrics.image import to_uint8

DEPTH_CONVENTION = "float32 distance along the unit-length pixel ray (harness.core.data.rays), metres; inf: no surface"


def encode_view(view: dict, with_alpha: bool) -> np.ndarray:
    """The 8-bit image saved for a rendered view: RGB, or RGBA (zero colour where transparent)."""
    if not with_alpha:
        return to_uint8(view["rgb"])
    rgb = view["rgb"] * view["alpha"][..., None]
    return to_uint8(np.concatenate([rgb, view["alpha"][..., None]], axis=-1))


def _frame(scene: ProceduralScene, i: int) -> dict:
    c2w = np.vstack([scene.cameras.c2w[i].astype(np.float64), [0.0, 0.0, 0.0, 1.0]])
    frame = {"file_path": f"images/{scene.names[i]}.png", "transform_matrix": c2w.tolist(), "split": scene.splits[i],
             "depth_file_path": f"depth/{scene.names[i]}.npy"}
    if scene.transients is not None:
        frame["mask_path"] = f"masks/{scene.names[i]}.png"
    if scene.exposure is not None:
        frame["exposure"] = float(scene.exposure[i])
    if len(scene.conditions) > 1:
        frame["appearance_id"] = int(scene.condition[i])
    if scene.sequence is not None:
        frame["sequence_id"] = int(scene.sequence[i])
    return frame


def transforms(scene: ProceduralScene, provenance: dict) -> dict:
    cams = scene.cameras
    top = {"camera_model": "OPENCV", "fl_x": float(cams.fx[0]), "fl_y": float(cams.fy[0]), "cx": float(cams.cx[0]),
           "cy": float(cams.cy[0]), "w": cams.width, "h": cams.height, "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0}
    top.update(scene.metadata)
    top["depth_convention"] = DEPTH_CONVENTION
    top["capture_conditions"] = scene.conditions
    top["procedural"] = provenance
    top["frames"] = [_frame(scene, i) for i in range(len(cams))]
    return top


def encode_mask(view: dict) -> np.ndarray:
    """The 8-bit single-channel mask saved for a rendered view: 255 where static content shows, 0 transient."""
    return np.where(view["transient"], 0, 255).astype(np.uint8)


def write_scene(scene: ProceduralScene, folder: Path, provenance: dict, params: dict) -> None:
    """Render every view into `folder` (which must exist); transforms.json is written last."""
    (folder / "images").mkdir()
    (folder / "depth").mkdir()
    if scene.transients is not None:
        (folder / "masks").mkdir()
    for i, name in enumerate(scene.names):
        view = render_view(scene, i)
        Image.fromarray(encode_view(view, with_alpha=not scene.sky)).save(folder / "images" / f"{name}.png")
        np.save(folder / "depth" / f"{name}.npy", view["depth"])
        if scene.transients is not None:
            Image.fromarray(encode_mask(view)).save(folder / "masks" / f"{name}.png")
    (folder / "params.json").write_text(json.dumps({**provenance, "params": params}, indent=2, sort_keys=True) + "\n")
    (folder / "transforms.json").write_text(json.dumps(transforms(scene, provenance), indent=1) + "\n")
