"""LPIPS (Zhang et al. 2018) through the `lpips` package, with backbone weights from a file we choose.

The package ships its own linear heads; its ImageNet backbone would normally be downloaded by
torchvision. Here the backbone is built random (`pnet_rand=True`) and then overwritten from a
torchvision-keyed state dict found locally or, when every local place misses, downloaded once into
torchvision's hub cache the way torchvision does it (its published URL, read from the dataset
manifest, sha256 prefix checked); a check that every backbone parameter was replaced makes a
silently random backbone impossible.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import socket
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import torch
import torch.nn.functional as F

from harness.core.errors import DataError, MetricError
from harness.core.paths import DATA_DIR, resolve_project_path

log = logging.getLogger(__name__)

WEIGHTS_ENV = "HARNESS_LPIPS_WEIGHTS"
URL_ENV = "HARNESS_LPIPS_URL"  # full URL of the backbone file to download instead of torchvision's
OFFLINE_ENV = "HARNESS_OFFLINE"  # set (1, true, yes, on) on compute nodes without network: never download
PROJECT_WEIGHTS_DIR = DATA_DIR / "lpips_weights"
# net -> (torchvision's hub-cache file: a full-model state dict, features-only file in a local folder)
BACKBONE_FILES = {
    "vgg": ("vgg16-397923af.pth", "vgg16_features_only.pth"),
    "alex": ("alexnet-owt-7be5be79.pth", "alexnet_features_only.pth"),
}
LPIPS_NETS = tuple(BACKBONE_FILES)
# The download: an offline machine must fail within seconds, not hang (name resolution, then
# connecting and the response headers); a started transfer may stall longer before it is given up.
RESOLVE_TIMEOUT_S = 4.0
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0
# torchvision's check_hash convention: the hex digits after the last '-' of the file name start its sha256.
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[^-]*$")

_MODELS: dict[tuple[str, str, Path], tuple[torch.nn.Module, dict]] = {}


def _check_net(net: str) -> None:
    if net not in BACKBONE_FILES:
        raise MetricError(f"unknown LPIPS net {net!r}; expected one of {LPIPS_NETS}")


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _download_source(net: str) -> tuple[str, Path, str | None]:
    """(URL, destination in the hub cache, expected sha256 prefix) of the backbone download.

    torchvision's URL, file name and hash prefix come from the manifest entry `lpips_<net>`
    (harness/core/data/datasets.toml); $HARNESS_LPIPS_URL replaces the URL (`{file}` in it stands for
    torchvision's file name), and then, as in torchvision, the file is cached under the URL's file
    name, whose hex digits after the last '-' must start its sha256.
    """
    from harness.core.data.manifest import get_entry, load_manifest

    entry = get_entry(load_manifest(), f"lpips_{net}")
    override = os.environ.get(URL_ENV, "").strip()
    if not override:
        return entry.urls[0], _hub_checkpoints() / entry.file, entry.sha256_prefix
    url = override.replace("{file}", entry.file)
    parts = urlsplit(url)
    name = parts.path.rsplit("/", 1)[-1]
    match = _HASH_IN_NAME.search(name)
    if parts.scheme not in ("http", "https") or not parts.hostname or not match:
        raise MetricError(f"{URL_ENV}={override!r}: expected the http(s) URL of a file whose name carries the first "
                          f"8 or more hex digits of its sha256 after a '-', as torchvision's do (e.g. "
                          f".../{entry.file}); they are checked after the download")
    return url, _hub_checkpoints() / name, match.group(1)


def _candidates(net: str, weights_dir: str | Path | None) -> list[Path]:
    hub_name, local_name = BACKBONE_FILES[net]
    paths = [_hub_checkpoints() / hub_name]
    if os.environ.get(URL_ENV, "").strip():  # what an earlier download from $HARNESS_LPIPS_URL left
        with contextlib.suppress(MetricError):  # a malformed value is reported only when a download is needed
            cached = _download_source(net)[1]
            if cached not in paths:
                paths.append(cached)
    dirs = []
    if weights_dir is not None:
        dirs.append(resolve_project_path(weights_dir))
    if os.environ.get(WEIGHTS_ENV, "").strip():  # the Makefile exports it empty when ../shared is absent
        dirs.append(resolve_project_path(os.environ[WEIGHTS_ENV].strip()))
    dirs.append(PROJECT_WEIGHTS_DIR)
    for d in dirs:
        # A copy of torchvision's own file in a local folder is accepted too (e.g. on a cluster).
        paths += [d / local_name, d / hub_name]
    return paths


def downloads_off() -> str | None:
    """`HARNESS_OFFLINE=<value>` when that switch forbids downloads, else None."""
    value = os.environ.get(OFFLINE_ENV, "").strip()
    return f"{OFFLINE_ENV}={value}" if value.lower() not in ("", "0", "false", "no", "off") else None


def check_lpips_weights(net: str = "vgg", weights_dir: str | Path | None = None) -> Path:
    """The backbone weight file LPIPS(net) will use, downloading it if needed; else one-line MetricError.

    Order: torchvision's hub cache (torch.hub.get_dir()/checkpoints), `weights_dir` (relative paths
    against the project root), $HARNESS_LPIPS_WEIGHTS, <project>/data/lpips_weights. When all miss,
    torchvision's file is downloaded into the hub cache (see `_download_source`), unless
    $HARNESS_OFFLINE is set; an unreachable host fails within seconds. The error names every path
    tried, the URL and the fixes. Call it before training so a sweep without weights stops at once.
    """
    _check_net(net)
    tried = _candidates(net, weights_dir)
    for path in tried:
        if path.is_file():
            return path
    hub_name, local_name = BACKBONE_FILES[net]
    url, dest, prefix = _download_source(net)
    missing = (f"LPIPS {net!r} backbone weights not found (expected {local_name} or torchvision's {hub_name}); "
               f"tried: {', '.join(str(p) for p in tried)}")
    fixes = (f"fix: run `make data DOWNLOAD=lpips_{net}` (or `python -m harness data --download lpips_{net}`) on a "
             f"machine with network, which saves data/lpips_weights/{hub_name}, or set {WEIGHTS_ENV}=<folder with "
             f"{local_name} or {hub_name}>")
    switch = downloads_off()
    if switch:
        raise MetricError(f"{missing}; downloads are off ({switch}), so {url} was not fetched; {fixes}")
    try:
        _download(url, dest, prefix)
    except (DataError, OSError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)  # DownloadError: the short cause
        raise MetricError(f"{missing}; downloading {url} into {dest} failed: {reason}; {fixes}") from None
    log.info("fetched LPIPS %r backbone (%s) from %s into %s", net, _size(dest.stat().st_size), url, dest)
    return dest


def _download(url: str, dest: Path, prefix: str | None) -> None:
    """harness.core.data.fetch.fetch with a bounded connect, one process at a time per hub cache."""
    from harness.core.data.fetch import fetch

    _resolve_within(url, RESOLVE_TIMEOUT_S)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _locked(dest.parent):
        if dest.is_file():  # another process fetched it while this one waited
            return
        fetch(url, dest, sha256_prefix=prefix, timeout=READ_TIMEOUT_S, connect_timeout=CONNECT_TIMEOUT_S)


def _resolve_within(url: str, seconds: float) -> None:
    """Fail when the host's name does not resolve within `seconds`: socket timeouts do not cover name
    resolution, and a node whose DNS server is unreachable can block in getaddrinfo for tens of seconds.
    The lookup runs in a daemon thread that is left behind if it hangs. Errors other than the timeout are
    left for the download to report."""
    import urllib.request

    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):  # urllib connects to the proxy
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    host = parts.hostname or ""
    lookup = threading.Thread(target=_try_resolve, args=(host,), daemon=True, name=f"resolve {host}")
    lookup.start()
    lookup.join(seconds)
    if lookup.is_alive():
        from harness.core.data.fetch import DownloadError

        raise DownloadError(url, f"cannot resolve {host} within {seconds:g} s (no network or no DNS?)")


def _try_resolve(host: str) -> None:
    with contextlib.suppress(OSError, UnicodeError):
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)


@contextlib.contextmanager
def _locked(folder: Path):
    """An exclusive flock on `folder` itself (nothing is left behind); best effort where flock fails."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _size(n: int) -> str:
    """Binary units, as torchvision's model pages and the progress bar count them (VGG16: 528 MB)."""
    return f"{n / 2**20:.0f} MB" if n >= 2**20 else f"{n / 2**10:.0f} kB"


def _load_backbone(model: torch.nn.Module, path: Path) -> None:
    """Copy `features.N.*` tensors from `path` into lpips' slices (named `sliceK.N.*`), all or error."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or foreign file: many exception types, one message
        raise MetricError(f"{path}: cannot load LPIPS backbone weights ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise MetricError(f"{path}: expected a state dict, got {type(state).__name__}")
    features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    params = dict(model.get_submodule("net").named_parameters())  # lpips.LPIPS.net: the backbone
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


def lpips_batch(model: torch.nn.Module, preds: list[np.ndarray], gts: list[np.ndarray],
                masks: Sequence[np.ndarray | None] | None = None) -> list[float]:
    """LPIPS of equally shaped H x W x 3 [0, 1] arrays, one forward pass, no autograd.

    A view with a mask (bool H x W, True = counts) gets its spatial LPIPS map averaged over the kept
    pixels instead (see `lpips_map`); views without one get the model's own value, as if alone.
    """
    device = _device(model)
    x = torch.from_numpy(np.stack(preds).astype(np.float32)).permute(0, 3, 1, 2).to(device)
    y = torch.from_numpy(np.stack(gts).astype(np.float32)).permute(0, 3, 1, 2).to(device)
    with torch.inference_mode():
        if masks is None or all(m is None for m in masks):
            return model(x * 2.0 - 1.0, y * 2.0 - 1.0).flatten().cpu().tolist()
        whole, spatial = lpips_map(model, x * 2.0 - 1.0, y * 2.0 - 1.0)
        out = whole.cpu().tolist()
        for i, m in enumerate(masks):
            if m is not None:
                out[i] = float(spatial[i, 0][torch.from_numpy(m).to(device)].double().mean())
        return out


def lpips_map(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(LPIPS (N,), its spatial map (N, 1, H, W)) of (N, 3, H, W) inputs in [-1, 1], one forward pass.

    The map is what lpips' `spatial=True` returns (Zhang et al. 2018, eq. 1 before the spatial mean):
    each layer's weighted distance map, upsampled bilinearly (align_corners=False) to the image size,
    summed over layers. The per-layer maps are read off the model's linear heads with forward hooks,
    so the network runs once and the value is the package's own. Its mean equals the LPIPS where each
    layer's size divides the image's (the upsampling then spreads every cell evenly); otherwise the
    border cells' weights differ slightly.
    """
    layers: list[torch.Tensor] = []
    heads = list(model.get_submodule("lins").children())  # lpips.LPIPS: a 1x1-conv head per layer, in order
    hooks = [head.register_forward_hook(lambda _mod, _inp, out: layers.append(out)) for head in heads]
    try:
        whole = model(x, y).flatten()
    finally:
        for hook in hooks:
            hook.remove()
    if len(layers) != len(heads):  # another forward ran through the same model meanwhile
        raise MetricError(f"lpips: expected {len(heads)} layer maps from one pass, got {len(layers)}")
    spatial = torch.zeros_like(x[:, :1])
    for d in layers:
        spatial += F.interpolate(d, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
    return whole, spatial
