"""Rendering a split with a method and scoring it through harness.core.metrics (the only scorer)."""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import gin
import numpy as np
import torch
from PIL import Image

from harness.core.data.rays import image_rays
from harness.core.data.scene import Split
from harness.core.method import has as has_capability

log = logging.getLogger(__name__)


def render_view(method, split: Split, index: int, chunk: int) -> np.ndarray:
    """One image (H, W, 3) float32 in [0, 1], rendered in chunks of rays."""
    return render_maps(method, split, index, chunk)["rgb"]


def render_maps(method, split: Split, index: int, chunk: int) -> dict[str, np.ndarray]:
    """A view rendered in chunks of rays: 'rgb' (H, W, 3) float32 in [0, 1], and 'depth' (H, W)
    when the method returns one."""
    origins, dirs = image_rays(split.cameras, index)
    outs = []
    with torch.no_grad():
        for start in range(0, origins.shape[0], chunk):
            outs.append(method.render(origins[start:start + chunk], dirs[start:start + chunk]))
    h, w = split.cameras.height, split.cameras.width
    rgb = torch.cat([o["rgb"] for o in outs]).clamp(0, 1).reshape(h, w, 3)
    maps = {"rgb": rgb.cpu().numpy().astype(np.float32)}
    if all("depth" in o for o in outs):
        maps["depth"] = torch.cat([o["depth"] for o in outs]).reshape(h, w).cpu().numpy()
    return maps


GROUND_TRUTH = ".ground_truth"  # beside the trial folders: each scored target once, named by its content


def save_ground_truth(record_dir: Path, target: np.ndarray) -> str:
    """Write a scored target (8-bit PNG) once into <record_dir>/../.ground_truth/, named by the hash of
    its bytes (every trial of a scene shares one copy); returns its path relative to `record_dir`, for
    metrics.json, so a report reads ground truth from the runs folder alone, without the dataset."""
    data = _png_bytes(np.asarray(target)[..., :3])
    name = f"{hashlib.sha256(data).hexdigest()[:20]}.png"
    path = Path(record_dir).parent / GROUND_TRUTH / name
    if not path.exists():
        from harness.core.records import atomic_write_bytes

        atomic_write_bytes(path, data)
    return f"../{GROUND_TRUTH}/{name}"


def save_png(path: Path, img: np.ndarray) -> None:
    """Write an image as 8-bit PNG (atomically); the same rounding the scores use."""
    from harness.core.records import atomic_write_bytes

    atomic_write_bytes(path, _png_bytes(img))


def _png_bytes(img: np.ndarray) -> bytes:
    """An image as 8-bit PNG bytes (float images rounded as the scores round them)."""
    from harness.core.metrics import to_uint8

    buf = io.BytesIO()
    Image.fromarray(img if img.dtype == np.uint8 else to_uint8(img)).save(buf, format="PNG")
    return buf.getvalue()


@gin.configurable
class Evaluation:
    """How a trial is scored; every field is part of the recorded protocol."""

    def __init__(self, metrics=("psnr", "ssim", "lpips"), lpips_net: str = "vgg", chunk: int = 16384,
                 save_renders: bool = True, error_maps: bool = False, lpips_weights_dir: str | None = None):
        self.metrics = tuple(metrics)
        self.lpips_net = lpips_net
        self.chunk = int(chunk)
        self.save_renders = save_renders
        self.error_maps = error_maps
        self.lpips_weights_dir = lpips_weights_dir

    def preflight(self) -> None:
        """Fail before any training if LPIPS weights are missing (never a random backbone)."""
        if "lpips" in self.metrics:
            from harness.core.metrics import check_lpips_weights

            check_lpips_weights(self.lpips_net, self.lpips_weights_dir)

    def views(self, method, split: Split, indices, shared: bool = True):
        """(name, image as scored (float32 in [0, 1]), target[, mask]) for `indices`: through the method's own
        view protocol when it declares one (the 'views' capability, harness.core.method.ViewProtocol),
        else whole renders; with the split's mask of the view (the pixels that count, the dataset's
        protocol: transient objects excluded) when it has masks."""
        from harness.run import distributed

        own = has_capability(method, "views")
        def render(i: int):
            return method.render_view(split, i) if own else render_view(method, split, i, self.chunk)

        # data parallel (`shared`): every rank renders its share of the views, rank 0 receives them all (and
        # only it scores); not `shared`: this process renders them all (rank 0's tracker panel)
        pairs = distributed.gathered(render, indices) if shared else ((i, render(i)) for i in map(int, indices))
        masks = split.masks
        scored = method.scored_part if own else (lambda x: x)
        for i, image in pairs:
            view = (split.names[i], image, scored(split.images[i]))
            yield view if masks is None else (*view, scored(masks[i]))

    def follow(self, method, split: Split, indices=None) -> None:
        """A rank other than 0 (data parallel): render its share of what rank 0's `score` of the same views
        renders (harness.run.distributed.gathered); it scores and writes nothing."""
        for _ in self.views(method, split, range(len(split)) if indices is None else indices):
            pass

    def score_views(self, views, renders_dir: Path | None = None, metrics=None, progress=None,
                    background=(1.0, 1.0, 1.0), keep: dict | None = None) -> dict:
        """Score (name, image, target) views through harness.core.metrics, saving each image as scored
        (8-bit PNG) with its ground truth (`save_ground_truth`; listed in the result's `ground_truth`)
        and, with `error_maps`, its error map; methods and compositions only return images. `keep`: a dict
        that receives each image as scored (8-bit), by view name."""
        from harness.core.metrics import error_map, score_images, to_8bit

        truth: dict[str, str] = {}

        def saved():
            for name, image, target, *mask in views:
                pred = np.asarray(to_8bit(image))  # numpy in, numpy out
                if keep is not None:
                    keep[name] = pred
                if renders_dir is not None and self.save_renders:
                    save_png(renders_dir / f"{name}.png", pred)
                    truth[name] = save_ground_truth(renders_dir.parent, target)
                    if self.error_maps:
                        save_png(renders_dir / "errors" / f"{name}.png", np.asarray(error_map(pred, target)))
                if progress is not None:
                    progress()
                yield (name, pred, target, *mask)

        result = score_images(saved(), metrics=tuple(metrics or self.metrics), lpips_net=self.lpips_net,
                              weights_dir=self.lpips_weights_dir, background=tuple(float(c) for c in background))
        if truth:
            result["ground_truth"] = truth
        return result

    def score(self, method, split: Split, indices=None, renders_dir: Path | None = None,
              metrics=None, progress=None, background=(1.0, 1.0, 1.0), flows=None) -> dict:
        """Render and score views of `split` (every view when `indices` is None). A dynamic split scored in
        full also gets 'temporal' (harness/run/temporal_scores.py: per-time-step means and, with the split's
        `flows` (N, H, W, 2), the flicker of each test camera's sequence) and its flicker's 'warp_error' and
        'warp_error_truth' at the top level."""
        full = indices is None
        dynamic = full and split.time_step is not None
        kept: dict[str, np.ndarray] = {}
        result = self.score_views(self.views(method, split, range(len(split)) if full else indices),
                                  renders_dir, metrics, progress, background, keep=kept if dynamic else None)
        if has_capability(method, "views"):
            result.update(method.evaluation_record(split, full))
        if dynamic:
            from harness.run.temporal_scores import temporal_scores

            by_index = {i: kept[n] for i, n in enumerate(split.names) if n in kept}
            result["temporal"] = temporal_scores(split, result.get("per_view", {}), by_index, flows)
            if "flicker" in result["temporal"]:
                result["warp_error"] = result["temporal"]["flicker"]["warp_error"]
                result["warp_error_truth"] = result["temporal"]["flicker"]["warp_error_truth"]
        return result
