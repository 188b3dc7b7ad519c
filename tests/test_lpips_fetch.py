"""LPIPS backbone weights fetched on first use (harness.core.metrics.lpips_model.check_lpips_weights).

Against a real HTTP server on 127.0.0.1 serving the real AlexNet backbone (features-only state dict
from ../shared/data/lpips_weights) under a torchvision-style name whose 8 hex digits start its sha256,
so the hash check is the production one. torch's hub cache and every local weights folder point into
tmp_path, so nothing outside it is read or written.
"""

import hashlib
import http.server
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.core import metrics as M
from harness.core.data.manifest import get_entry, load_manifest
from harness.core.errors import MetricError
from harness.core.metrics import lpips_model
from tests.conftest import ROOT, SHARED_DATA

ALEX_LOCAL = SHARED_DATA / "lpips_weights" / "alexnet_features_only.pth"
LEGO_TEST = ROOT / "data" / "nerf_synthetic" / "lego_100" / "test"


@pytest.fixture(scope="module")
def alex_bytes() -> bytes:
    """The real AlexNet backbone: LPIPS needs every feature tensor at full shape, so no stand-in will do."""
    if not ALEX_LOCAL.is_file():
        pytest.skip(f"shared test data not found: {ALEX_LOCAL}")
    return ALEX_LOCAL.read_bytes()


@pytest.fixture(scope="module")
def served_name(alex_bytes) -> str:
    """torchvision's naming convention (<name>-<first 8 hex digits of the sha256>.pth) for the served file."""
    return f"alexnet_features-{hashlib.sha256(alex_bytes).hexdigest()[:8]}.pth"


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # http.server's name
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(alex_bytes, served_name):
    httpd = _Server()
    httpd.files[f"/models/{served_name}"] = alex_bytes
    httpd.files["/models/alexnet-owt-7be5be79.pth"] = alex_bytes  # torchvision's name: a wrong hash for these bytes
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def places(tmp_path, monkeypatch):
    """Every local place empty: hub cache, $HARNESS_LPIPS_WEIGHTS, data/lpips_weights; no model cached."""
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    (tmp_path / "env_weights").mkdir()
    monkeypatch.setenv(lpips_model.WEIGHTS_ENV, str(tmp_path / "env_weights"))
    monkeypatch.setattr(lpips_model, "PROJECT_WEIGHTS_DIR", tmp_path / "project_weights")
    monkeypatch.setattr(lpips_model, "_MODELS", {})
    monkeypatch.delenv(lpips_model.OFFLINE_ENV, raising=False)
    monkeypatch.delenv(lpips_model.URL_ENV, raising=False)
    return hub


def two_views() -> tuple[np.ndarray, np.ndarray]:
    a, b = (np.asarray(Image.open(LEGO_TEST / f"{n}.png").convert("RGB"), dtype=np.float32) / 255
            for n in ("r_0", "r_7"))
    return a, b


def fetched_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == lpips_model.__name__ and "fetched" in r.getMessage()]


def test_default_source_is_torchvisions_file_from_the_manifest(places):
    manifest = load_manifest()
    for net in ("vgg", "alex"):
        entry = get_entry(manifest, f"lpips_{net}")
        url, dest, prefix = lpips_model._download_source(net)
        assert url == entry.urls[0] == f"https://download.pytorch.org/models/{entry.file}"
        assert dest == places / entry.file and prefix == entry.sha256_prefix
        assert entry.file == lpips_model.BACKBONE_FILES[net][0]  # where the lookup looks first next time


def test_first_use_downloads_into_hub_cache_and_scores_as_the_local_file(places, server, served_name, monkeypatch,
                                                                         caplog):
    a, b = two_views()
    # Reference: the same file read from a local folder (nothing downloaded for it).
    reference = M.lpips_distance(a, b, net="alex", weights_dir=ALEX_LOCAL.parent)
    assert server.requests == []
    assert reference > 0.01  # two different views: a distance that can disagree
    monkeypatch.setattr(lpips_model, "_MODELS", {})

    url = f"{server.url}/models/{served_name}"
    monkeypatch.setenv(lpips_model.URL_ENV, url)
    with caplog.at_level(logging.INFO, logger=lpips_model.__name__):
        got = M.lpips_distance(a, b, net="alex")
    dest = places / served_name
    assert server.requests == [f"/models/{served_name}"]
    assert dest.read_bytes() == ALEX_LOCAL.read_bytes() and not dest.with_name(dest.name + ".part").exists()
    assert [key[2] for key in lpips_model._MODELS] == [dest.resolve()]  # scored with the downloaded file
    assert got == reference
    lines = fetched_lines(caplog)
    assert len(lines) == 1 and "\n" not in lines[0]
    assert f"'alex' backbone (9 MB) from {url} into {dest}" in lines[0]


def test_second_use_does_not_download(places, server, served_name, monkeypatch, caplog):
    monkeypatch.setenv(lpips_model.URL_ENV, f"{server.url}/models/{served_name}")
    first = M.check_lpips_weights("alex")
    assert first == places / served_name and len(server.requests) == 1
    with caplog.at_level(logging.INFO, logger=lpips_model.__name__):
        assert M.check_lpips_weights("alex") == first
        M.get_lpips_model("alex")
    assert len(server.requests) == 1  # zero new requests
    assert fetched_lines(caplog) == []


def test_url_template_names_torchvisions_file(places, server, monkeypatch):
    """`{file}` in $HARNESS_LPIPS_URL is torchvision's file name (a mirror of download.pytorch.org/models/)."""
    monkeypatch.setenv(lpips_model.URL_ENV, f"{server.url}/models/{{file}}")
    url, dest, prefix = lpips_model._download_source("alex")
    assert url == f"{server.url}/models/alexnet-owt-7be5be79.pth"
    assert dest == places / "alexnet-owt-7be5be79.pth" and prefix == "7be5be79"
    monkeypatch.setenv(lpips_model.URL_ENV, f"{server.url}/models/alexnet_features.pth")
    with pytest.raises(MetricError, match="hex digits of its sha256"):
        M.check_lpips_weights("alex")
    assert server.requests == []


def test_wrong_hash_is_rejected_and_nothing_is_left(places, server, alex_bytes, monkeypatch):
    # The real bytes served under torchvision's name: the name promises sha256 7be5be79..., they are not.
    url = f"{server.url}/models/alexnet-owt-7be5be79.pth"
    monkeypatch.setenv(lpips_model.URL_ENV, url)
    with pytest.raises(MetricError) as err:
        M.check_lpips_weights("alex")
    msg = str(err.value)
    assert server.requests == ["/models/alexnet-owt-7be5be79.pth"]  # it did arrive, and was refused
    assert "\n" not in msg and url in msg
    assert "checksum mismatch" in msg and "starting with 7be5be79" in msg
    assert f"got {hashlib.sha256(alex_bytes).hexdigest()}" in msg and "removed" in msg
    assert list(places.iterdir()) == []  # neither the file nor a .part


def assert_unreachable_message(msg: str, url: str, hub: Path, tmp_path: Path) -> None:
    assert "\n" not in msg and "not found" in msg
    assert f"downloading {url} into " in msg
    for tried in (hub / "alexnet-owt-7be5be79.pth", tmp_path / "env_weights/alexnet_features_only.pth",
                  tmp_path / "project_weights/alexnet_features_only.pth"):
        assert str(tried) in msg
    assert "`make data DOWNLOAD=lpips_alex`" in msg and "`python -m harness data --download lpips_alex`" in msg
    assert "HARNESS_LPIPS_WEIGHTS=<folder" in msg


def test_refused_port_fails_at_once(places, served_name, monkeypatch, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/models/{served_name}"
    monkeypatch.setenv(lpips_model.URL_ENV, url)
    start = time.monotonic()
    with pytest.raises(MetricError) as err:
        M.check_lpips_weights("alex")
    assert time.monotonic() - start < 10
    assert_unreachable_message(str(err.value), url, places, tmp_path)
    assert "cannot connect" in str(err.value)


def test_silent_host_fails_within_seconds(places, served_name, monkeypatch, tmp_path):
    """A host that never answers (a firewall dropping packets, a blackhole) fails within the connect timeout.

    Simulated with a socket that listens but never accepts: the kernel completes the handshake, no HTTP
    answer ever comes. (A non-routable address such as 10.255.255.1 is not a reliable blackhole: some
    sandboxes answer it.)
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/models/{served_name}"
        monkeypatch.setenv(lpips_model.URL_ENV, url)
        start = time.monotonic()
        with pytest.raises(MetricError) as err:
            M.check_lpips_weights("alex")
        took = time.monotonic() - start
    assert lpips_model.CONNECT_TIMEOUT_S - 0.5 < took < 10, took
    assert_unreachable_message(str(err.value), url, places, tmp_path)
    assert "timed out" in str(err.value)
    assert list(places.iterdir()) == []


def test_hanging_name_resolution_fails_within_seconds(places, served_name, monkeypatch, tmp_path):
    """No socket timeout covers getaddrinfo; a DNS server that never answers must not hang the sweep."""
    release = threading.Event()
    real = socket.getaddrinfo

    def hanging(host, *args, **kwargs):
        if host == "lpips-weights.invalid":
            release.wait(60)
            raise socket.gaierror("released")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    url = f"http://lpips-weights.invalid/models/{served_name}"
    monkeypatch.setenv(lpips_model.URL_ENV, url)
    start = time.monotonic()
    try:
        with pytest.raises(MetricError) as err:
            M.check_lpips_weights("alex")
    finally:
        release.set()
    assert time.monotonic() - start < 10
    assert_unreachable_message(str(err.value), url, places, tmp_path)
    assert "cannot resolve lpips-weights.invalid within" in str(err.value)


def test_offline_switch_forbids_the_download(places, server, served_name, monkeypatch, tmp_path):
    url = f"{server.url}/models/{served_name}"
    monkeypatch.setenv(lpips_model.URL_ENV, url)
    monkeypatch.setenv(lpips_model.OFFLINE_ENV, "1")
    monkeypatch.setenv(lpips_model.WEIGHTS_ENV, "")  # as the Makefile exports it without ../shared: unset
    with pytest.raises(MetricError) as err:
        M.check_lpips_weights("alex")
    msg = str(err.value)
    assert server.requests == []
    assert "\n" not in msg and "downloads are off (HARNESS_OFFLINE=1)" in msg and url in msg
    assert "`make data DOWNLOAD=lpips_alex`" in msg and "HARNESS_LPIPS_WEIGHTS=<folder" in msg
    assert str(ROOT / "alexnet_features_only.pth") not in msg  # the empty value did not become the project root
    assert not places.exists() or list(places.iterdir()) == []
    monkeypatch.setenv(lpips_model.OFFLINE_ENV, "0")  # an explicit "no" allows it
    assert M.check_lpips_weights("alex") == places / served_name and len(server.requests) == 1


def cli_env(tmp_path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (lpips_model.OFFLINE_ENV, lpips_model.URL_ENV)}
    (tmp_path / "env_weights").mkdir(exist_ok=True)
    env.update(TORCH_HOME=str(tmp_path / "torch_home"), HARNESS_LPIPS_WEIGHTS=str(tmp_path / "env_weights"), **extra)
    return env


def test_cli_downloads_on_first_use_and_fails_in_one_line_offline(tmp_path, server, served_name):
    if any((lpips_model.PROJECT_WEIGHTS_DIR / name).is_file() for name in lpips_model.BACKBONE_FILES["alex"]):
        pytest.skip(f"{lpips_model.PROJECT_WEIGHTS_DIR} holds the AlexNet weights: the CLI would download nothing")
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    for i, (p, g) in enumerate((("r_0", "r_7"), ("r_1", "r_8"))):
        (pred / f"v{i}.png").write_bytes((LEGO_TEST / f"{p}.png").read_bytes())
        (gt / f"v{i}.png").write_bytes((LEGO_TEST / f"{g}.png").read_bytes())
    cmd = [sys.executable, "-m", "harness", "evaluate", str(pred), str(gt), "--lpips-net", "alex",
           "--json", str(tmp_path / "scores.json")]
    url = f"{server.url}/models/{served_name}"

    offline = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                             env=cli_env(tmp_path, HARNESS_LPIPS_URL=url, HARNESS_OFFLINE="1"))
    assert offline.returncode == 2, offline.stderr
    assert offline.stderr.count("\n") == 1 and offline.stderr.startswith("error: "), offline.stderr
    assert "downloads are off (HARNESS_OFFLINE=1)" in offline.stderr and "Traceback" not in offline.stderr
    assert server.requests == []

    online = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env=cli_env(tmp_path, HARNESS_LPIPS_URL=url))
    assert online.returncode == 0, online.stderr
    dest = tmp_path / "torch_home" / "hub" / "checkpoints" / served_name
    lines = [line for line in online.stderr.splitlines() if "fetched" in line]
    assert len(lines) == 1 and f"fetched LPIPS 'alex' backbone (9 MB) from {url} into {dest}" in lines[0]
    assert server.requests == [f"/models/{served_name}"] and dest.is_file()
    assert (tmp_path / "scores.json").is_file() and "lpips" in online.stdout
