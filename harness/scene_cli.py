"""What `python -m harness scene make|check` runs: generate a procedural scene, summarise any scene."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.core.errors import ConfigError, DataError


def make_scene(kind: str, out: Path | None, bindings: list[str]) -> Path:
    """Generate procedural scene `kind` ('tiny', 'street', 'dynamic') with Gin `bindings` (e.g.
    'street_scene.n_blocks=6', 'dynamic_scene.n_steps=48') into `out`, or into the cache folder
    data/procedural/<kind>-<hash>/ when `out` is None; returns the folder."""
    from harness.core.data import procedural
    from harness.run import config

    if kind not in procedural.KINDS:
        raise DataError(f"unknown procedural scene '{kind}' (known: {', '.join(sorted(procedural.KINDS))})")
    try:
        config.parse([], list(bindings))
    except ConfigError as exc:  # parse names the files it read: here there are none, only bindings
        raise ConfigError(f"--bind: {str(exc).lstrip(': ')}") from None
    return procedural.make_procedural(kind, out=out)


def _appearance_summary(splits) -> str:
    """', exposure a-b, k appearance ids' over all splits, for Block-NeRF scenes."""
    exposure = [s.exposure for s in splits if s.exposure is not None]
    ids = [s.appearance_id for s in splits if s.appearance_id is not None]
    text = ""
    if exposure:
        values = np.concatenate(exposure)
        text += f", exposure {values.min():.2f}-{values.max():.2f}"
    if ids:
        text += f", {len(np.unique(np.concatenate(ids)))} appearance ids"
    return text


def check_scene(path: Path, format: str | None = None) -> str:
    """Load every split of a scene (validating it) and return one line: format, images per split, resolution
    (then Block-NeRF metadata, NDC, and for a dynamic scene its time steps, cameras per step and flow)."""
    from harness.core.data.doctor import dynamic_summary
    from harness.core.data.formats import detect_format, load_folder

    fmt = format or detect_format(Path(path))
    scene = load_folder(Path(path), fmt)
    sizes = sorted({f"{s.cameras.width}x{s.cameras.height}" for s in scene.splits.values()})
    counts = ", ".join(f"{name} {len(split)}" for name, split in scene.splits.items())
    extra = _appearance_summary(scene.splits.values())
    extra += f", {len(scene.extras['blocks'])} blocks" if "blocks" in scene.extras else ""
    extra += ", NDC" if scene.ndc else ""
    dynamic = dynamic_summary(scene)
    extra += f", {dynamic}" if dynamic else ""
    return f"{scene.path}: {fmt}, {counts} images, {' / '.join(sizes)}{extra}"
