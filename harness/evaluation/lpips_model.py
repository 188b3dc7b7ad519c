"""LPIPS (Zhang et al. 2018) through the `lpips` package, with backbone weights from local files only.

The package ships its own linear heads; its ImageNet backbone would normally be downloaded by
torchvision. Here the backbone is built random (`pnet_rand=True`) and then overwritten from a local
torchvision-keyed state dict; a check that every backbone parameter was replaced makes a silently
random backbone impossible.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from harness.errors import MetricError
from harness.paths import DATA_DIR, resolve_project_path

log = logging.getLogger(__name__)

WEIGHTS_ENV = "HARNESS_LPIPS_WEIGHTS"
PROJECT_WEIGHTS_DIR = DATA_DIR / "lpips_weights"
# net -> (torchvision's hub-cache file: a full-model state dict, features-only file in a local folder)
BACKBONE_FILES = {
    "vgg": ("vgg16-397923af.pth", "vgg16_features_only.pth"),
    "alex": ("alexnet-owt-7be5be79.pth", "alexnet_features_only.pth"),
}
LPIPS_NETS = tuple(BACKBONE_FILES)

_MODELS: dict[tuple[str, str, Path], tuple[torch.nn.Module, dict]] = {}


def _check_net(net: str) -> None:
    if net not in BACKBONE_FILES:
        raise MetricError(f"unknown LPIPS net {net!r}; expected one of {LPIPS_NETS}")


def _candidates(net: str, weights_dir: str | Path | None) -> list[Path]:
    hub_name, local_name = BACKBONE_FILES[net]
    paths = [Path(torch.hub.get_dir()) / "checkpoints" / hub_name]
    dirs = []
    if weights_dir is not None:
        dirs.append(resolve_project_path(weights_dir))
    if os.environ.get(WEIGHTS_ENV):
        dirs.append(resolve_project_path(os.environ[WEIGHTS_ENV]))
    dirs.append(PROJECT_WEIGHTS_DIR)
    for d in dirs:
        # A copy of torchvision's own file in a local folder is accepted too (e.g. on a cluster).
        paths += [d / local_name, d / hub_name]
    return paths


def check_lpips_weights(net: str = "vgg", weights_dir: str | Path | None = None) -> Path:
    """The backbone weight file LPIPS(net) will use, or a MetricError listing every path tried.

    Order: torchvision's hub cache (torch.hub.get_dir()/checkpoints), `weights_dir` (relative paths
    against the project root), $HARNESS_LPIPS_WEIGHTS, <project>/data/lpips_weights. Cheap: call it
    before training so a sweep without weights stops at once.
    """
    _check_net(net)
    tried = _candidates(net, weights_dir)
    for path in tried:
        if path.is_file():
            return path
    hub_name, local_name = BACKBONE_FILES[net]
    raise MetricError(
        f"LPIPS {net!r} backbone weights not found (expected {local_name} or torchvision's {hub_name}); "
        f"tried: {', '.join(str(p) for p in tried)}; pass weights_dir or set {WEIGHTS_ENV}")


def _load_backbone(model: torch.nn.Module, path: Path) -> None:
    """Copy `features.N.*` tensors from `path` into lpips' slices (named `sliceK.N.*`), all or error."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or foreign file: many exception types, one message
        raise MetricError(f"{path}: cannot load LPIPS backbone weights ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise MetricError(f"{path}: expected a state dict, got {type(state).__name__}")
    features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    params = dict(model.net.named_parameters())
    replaced = set()
    with torch.no_grad():
        for name, param in params.items():
            key = name.split(".", 1)[1]  # 'slice2.5.weight' -> '5.weight', torchvision's index
            src = features.get(key)
            if src is None or tuple(src.shape) != tuple(param.shape):
                got = "missing" if src is None else f"shape {tuple(src.shape)}"
                raise MetricError(f"{path}: features.{key} is {got}, LPIPS needs {tuple(param.shape)} "
                                  "(wrong network's weights?)")
            param.copy_(src.to(param.dtype))
            replaced.add(name)
    # Never evaluate with a random backbone: every parameter must now equal the file's tensor.
    if replaced != set(params) or not all(
            torch.equal(p, features[n.split(".", 1)[1]].to(p.dtype)) for n, p in params.items()):
        raise MetricError(f"{path}: LPIPS backbone was not fully replaced by the file's weights")


def get_lpips_model(net: str = "vgg", weights_dir: str | Path | None = None,
                    device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """(lpips.LPIPS model in eval mode, its protocol entry), built once per (net, device, weight file)."""
    path = check_lpips_weights(net, weights_dir)
    device = torch.device(device)
    key = (net, str(device), path.resolve())
    if key not in _MODELS:
        import lpips  # lazily: importing it pulls in torchvision

        with warnings.catch_warnings():
            # lpips 0.1.4 passes torchvision's deprecated `pretrained=` flag; harmless with pnet_rand.
            warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
            model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
        _load_backbone(model, path)
        model = model.to(device).eval().requires_grad_(False)
        with path.open("rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        info = {"net": net, "version": model.version, "package": f"lpips {_package_version()}",
                "input_range": "[-1, 1]", "backbone_file": path.name, "backbone_sha256": digest[:16]}
        log.info("LPIPS %s on %s, backbone from %s", net, device, path)
        _MODELS[key] = (model, info)
    return _MODELS[key]


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lpips")
    except PackageNotFoundError:
        return "unknown"


def lpips_distance(pred, gt, net: str = "vgg", weights_dir: str | Path | None = None,
                   device: str | torch.device = "cpu") -> float | torch.Tensor:
    """LPIPS of images in [0, 1] (H x W x 3, or N x H x W x 3 tensors); scaled to [-1, 1] here.

    numpy in -> float; tensors in -> tensor ((N,) when batched), differentiable w.r.t. the inputs.
    """
    model, _ = get_lpips_model(net, weights_dir, device)
    is_torch = isinstance(pred, torch.Tensor)
    x = pred if is_torch else torch.from_numpy(np.asarray(pred, dtype=np.float32))
    y = gt if isinstance(gt, torch.Tensor) else torch.from_numpy(np.asarray(gt, dtype=np.float32))
    if tuple(x.shape) != tuple(y.shape) or x.ndim not in (3, 4) or x.shape[-1] != 3:
        raise MetricError(f"lpips: expected equal H x W x 3 shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    batched = x.ndim == 4
    x, y = (t.reshape(-1, *t.shape[-3:]).permute(0, 3, 1, 2).float().to(_device(model)) for t in (x, y))
    if not is_torch:
        with torch.inference_mode():
            return float(model(x * 2.0 - 1.0, y * 2.0 - 1.0).flatten()[0])
    out = model(x * 2.0 - 1.0, y * 2.0 - 1.0).flatten()
    return out if batched else out[0]


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def lpips_batch(model: torch.nn.Module, preds: list[np.ndarray], gts: list[np.ndarray]) -> list[float]:
    """LPIPS of equally shaped H x W x 3 [0, 1] arrays, one forward pass, no autograd."""
    device = _device(model)
    x = torch.from_numpy(np.stack(preds).astype(np.float32)).permute(0, 3, 1, 2).to(device)
    y = torch.from_numpy(np.stack(gts).astype(np.float32)).permute(0, 3, 1, 2).to(device)
    with torch.inference_mode():
        return model(x * 2.0 - 1.0, y * 2.0 - 1.0).flatten().cpu().tolist()
