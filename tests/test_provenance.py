"""harness.core.provenance: source fingerprint, git fields, environment, differences (issue 22, item 2)."""

import copy
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from harness.core import provenance
from harness.core.provenance import differences, environment, short_code, source_fingerprint

ROOT = Path(__file__).resolve().parent.parent
HAS_GIT = shutil.which("git") is not None


@pytest.fixture(autouse=True)
def _fresh_cache():
    provenance.clear_cache()
    yield
    provenance.clear_cache()


FAKE_TREE = {
    "harness/__init__.py": "",
    "harness/x.py": "VALUE = 1\n",
    "harness/core/data/datasets.toml": "[lego]\nurl = 'x'\n",
    "harness/__pycache__/x.cpython-311.pyc": "compiled",
    "baselines/__init__.py": "",
    "baselines/b.py": "def f():\n    return 2\n",
    "kernels/__init__.py": "",
    "kernels/k.py": "K = 3\n",
    "kernels/cuda/c.cu": "__global__ void k() {}\n",
    "kernels/notes.md": "not source\n",
    "README.md": "outside the source folders\n",
    "tests/t.py": "outside too\n",
}


def make_tree(base: Path) -> Path:
    for rel, text in FAKE_TREE.items():
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return base


def rewrite(path: Path, data: bytes) -> None:
    """New content with a strictly later mtime (a coarse-mtime filesystem could hide the edit)."""
    old = path.stat().st_mtime_ns
    path.write_bytes(data)
    os.utime(path, ns=(old + 1_000_000_000, old + 1_000_000_000))


def sha(root, extra=()):
    return source_fingerprint(extra, root=root)["source_sha256"]


# ------------------------------------------------------------------------------------ source hash

def test_source_hash_stable_and_sensitive_to_tracked_source(tmp_path):
    root = make_tree(tmp_path / "proj")
    fp = source_fingerprint(root=root)
    assert len(fp["source_sha256"]) == 64
    assert fp["files"] == 8  # 6 *.py (no __pycache__), the .cu, datasets.toml
    assert fp["missing_modules"] == [] and fp["extra_modules"] == []
    assert source_fingerprint(root=root) == fp
    provenance.clear_cache()
    assert source_fingerprint(root=root) == fp  # recomputed: same

    base = fp["source_sha256"]
    x = root / "harness/x.py"
    rewrite(x, b"VALUE = 2\n")  # one byte, same size
    changed = sha(root)
    assert changed != base
    rewrite(x, b"VALUE = 1\n")
    assert sha(root) == base

    for rel in ("kernels/cuda/c.cu", "harness/core/data/datasets.toml", "baselines/b.py"):
        path = root / rel
        original = path.read_bytes()
        rewrite(path, original + b" ")
        assert sha(root) != base, rel
        rewrite(path, original)
        assert sha(root) == base, rel

    new = root / "kernels/triton/new.py"
    new.parent.mkdir()
    new.write_text("")
    assert sha(root) != base
    new.unlink()
    assert sha(root) == base


def test_source_hash_ignores_mtime_and_files_outside(tmp_path):
    root = make_tree(tmp_path / "proj")
    base = sha(root)
    x = root / "harness/x.py"
    st = x.stat()
    os.utime(x, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # touched, same content
    assert sha(root) == base
    for rel in ("README.md", "tests/t.py", "kernels/notes.md", "harness/__pycache__/x.cpython-311.pyc"):
        rewrite(root / rel, b"changed")
        assert sha(root) == base, rel
    (root / "harness/__pycache__/y.cpython-311.pyc").write_text("new")
    (root / "harness/core/data/other.toml").write_text("new")
    assert sha(root) == base


def test_source_hash_is_location_independent(tmp_path):
    a = make_tree(tmp_path / "a")
    b = make_tree(tmp_path / "elsewhere" / "b")
    assert sha(a) == sha(b)


def test_extra_module_hashed_and_missing_module_listed(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "proj")
    ext = tmp_path / "ext"
    ext.mkdir()
    name = f"prov_toy_{uuid.uuid4().hex[:8]}"
    module = ext / f"{name}.py"
    module.write_text("class Toy: pass\n")
    monkeypatch.syspath_prepend(str(ext))

    plain = sha(root)
    fp = source_fingerprint([name], root=root)
    assert fp["extra_modules"] == [name] and fp["missing_modules"] == []
    assert fp["source_sha256"] != plain
    rewrite(module, b"class Toy: passed = 1\n")
    changed = source_fingerprint([name], root=root)["source_sha256"]
    assert changed not in (plain, fp["source_sha256"])
    assert sha(root) == plain  # without the module, its edit does not matter

    missing = source_fingerprint([name, "no_such_package_xyz.sub"], root=root)
    assert missing["missing_modules"] == ["no_such_package_xyz.sub"]
    assert missing["source_sha256"] not in (plain, changed)
    # order and repeats of the names do not matter
    assert source_fingerprint(["no_such_package_xyz.sub", name, name], root=root) == missing


def test_extra_module_inside_the_source_folders_is_not_hashed_twice():
    plain = source_fingerprint()
    with_inside = source_fingerprint(["harness.core.records"])
    assert with_inside["source_sha256"] == plain["source_sha256"]
    toy = source_fingerprint(["tests.fixtures.toy_method"])
    assert toy["source_sha256"] != plain["source_sha256"] and toy["missing_modules"] == []


def test_real_project_fingerprint_timing():
    provenance.clear_cache()
    t0 = time.perf_counter()
    fp = source_fingerprint(["tests.fixtures.toy_method"])
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(20):
        again = source_fingerprint(["tests.fixtures.toy_method"])
    warm = (time.perf_counter() - t0) / 20
    print(f"\nsource_fingerprint on the project ({fp['files']} files): cold {cold * 1e3:.1f} ms, "
          f"warm (cached) {warm * 1e3:.2f} ms; {short_code(fp)}")
    assert again == fp
    assert fp["files"] > 50
    assert fp["git_commit"] is None or len(fp["git_commit"]) == 40


def test_result_is_a_copy():
    fp = source_fingerprint()
    fp["missing_modules"].append("x")
    fp["source_sha256"] = "mutated"
    assert source_fingerprint()["source_sha256"] != "mutated"
    assert source_fingerprint()["missing_modules"] == []


# ----------------------------------------------------------------------------------------- git

def git(cwd, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com",
                           "-c", "commit.gpgsign=false", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.mark.skipif(not HAS_GIT, reason="git not installed")
def test_git_fields_in_a_real_repository(tmp_path):
    root = make_tree(tmp_path / "repo")
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "one")
    head = git(root, "rev-parse", "HEAD")

    fp = source_fingerprint(root=root)
    assert fp["git_commit"] == head
    assert fp["git_dirty"] is False and fp["git_diff_sha256"] is None

    x = root / "harness/x.py"
    rewrite(x, b"VALUE = 2\n")
    dirty = source_fingerprint(root=root)
    assert dirty["git_commit"] == head and dirty["git_dirty"] is True
    assert len(dirty["git_diff_sha256"]) == 64
    assert short_code(dirty) == f"{dirty['source_sha256'][:12]} @ {head[:10]}+dirty"
    rewrite(x, b"VALUE = 3\n")
    assert source_fingerprint(root=root)["git_diff_sha256"] != dirty["git_diff_sha256"]

    # changes outside harness/, baselines/, kernels/ are not "dirty"
    rewrite(x, b"VALUE = 1\n")
    rewrite(root / "README.md", b"edited")
    clean = source_fingerprint(root=root)
    assert clean["git_dirty"] is False and clean["git_diff_sha256"] is None
    assert clean["source_sha256"] == fp["source_sha256"]

    # committing changes no source file's stat, but the cached git fields must follow
    rewrite(x, b"VALUE = 2\n")
    assert source_fingerprint(root=root)["git_dirty"] is True
    git(root, "commit", "-q", "-am", "two")
    committed = source_fingerprint(root=root)
    assert committed["git_commit"] == git(root, "rev-parse", "HEAD") != head
    assert committed["git_dirty"] is False and committed["git_diff_sha256"] is None
    assert committed["source_sha256"] == dirty["source_sha256"]


@pytest.mark.skipif(not HAS_GIT, reason="git not installed")
def test_git_fields_none_outside_git_or_without_git(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "tarball")
    fp = source_fingerprint(root=root)
    assert (fp["git_commit"], fp["git_dirty"], fp["git_diff_sha256"]) == (None, None, None)
    assert short_code(fp) == fp["source_sha256"][:12]

    # a repository that does not track the source (a tarball unpacked inside someone's repo)
    git(root, "init", "-q")
    git(root, "add", "README.md")
    git(root, "commit", "-q", "-m", "unrelated")
    fp = source_fingerprint(root=root)
    assert (fp["git_commit"], fp["git_dirty"], fp["git_diff_sha256"]) == (None, None, None)

    # git itself missing from PATH: no exception, None fields, same source hash
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "all")
    assert source_fingerprint(root=root)["git_commit"] is not None
    provenance.clear_cache()
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    nogit = source_fingerprint(root=root)
    assert (nogit["git_commit"], nogit["git_dirty"], nogit["git_diff_sha256"]) == (None, None, None)
    assert nogit["source_sha256"] == fp["source_sha256"]


# --------------------------------------------------------------------------------- environment

def test_environment_keys_and_values():
    env = environment()
    for key in ("python", "platform", "torch", "cuda", "cudnn", "triton", "device", "device_name",
                "cpu_model", "cpu_capability", "aten_cpu_capability", "torch_threads", "packages"):
        assert key in env, key
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert env["torch"] == torch.__version__
    assert env["cuda"] == torch.version.cuda
    assert isinstance(env["cpu_capability"], str) and env["cpu_capability"]
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["torch_threads"] == torch.get_num_threads()
    assert env["aten_cpu_capability"] == os.environ.get("ATEN_CPU_CAPABILITY")
    assert set(env["packages"]) == {"torch", "torchvision", "numpy", "lpips", "scikit-image",
                                    "scipy", "pillow"}
    import numpy
    assert env["packages"]["numpy"] == numpy.__version__
    assert env["packages"]["torch"] == torch.__version__.split("+")[0]
    assert env["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        assert env["cudnn"] is None
        assert env["device_name"] == env["cpu_model"]
    assert env["cpu_model"]
    json.dumps(env)  # goes into a JSON record as is

    assert environment("cpu")["device"] == "cpu"
    assert environment("NVIDIA H100 80GB HBM3")["device_name"] == "NVIDIA H100 80GB HBM3"


def test_environment_follows_threads():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert environment()["torch_threads"] == 1
    finally:
        torch.set_num_threads(before)
    assert environment()["torch_threads"] == before


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
                    reason="needs an x86 CPU with AVX2")
def test_aten_cpu_capability_in_a_subprocess_is_real():
    """The 'other machine' case: torch limited to AVX2 reports it, and differences() names it."""
    code = "import json; from harness.core.provenance import environment; print(json.dumps(environment()))"
    env = dict(os.environ, ATEN_CPU_CAPABILITY="avx2")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300, check=True)
    other = json.loads(out.stdout.strip().splitlines()[-1])
    assert other["cpu_capability"] == "AVX2"
    assert other["aten_cpu_capability"] == "avx2"
    here = environment()
    lines = differences({"environment": here}, {"environment": other})
    if here["cpu_capability"] != "AVX2":
        assert f"cpu capability: {here['cpu_capability']} -> AVX2" in lines
    assert not any(line.startswith(("torch:", "cpu model:")) for line in lines)


# --------------------------------------------------------------------------------- differences

def record():
    return {"code": {"source_sha256": "1a2b3c4d5e6f" + "0" * 52, "files": 80, "extra_modules": [],
                     "missing_modules": [], "git_commit": "0123456789" + "a" * 30,
                     "git_dirty": True, "git_diff_sha256": "f" * 64},
            "environment": {"python": "3.11.7", "torch": "2.4.0", "cuda": "12.1", "cudnn": 90100,
                            "triton": "3.0.0", "device": "cuda:0", "device_name": "NVIDIA H100",
                            "gpu_capability": "9.0", "cpu_model": "AMD EPYC",
                            "cpu_capability": "AVX512", "aten_cpu_capability": None,
                            "torch_threads": 8, "float32_matmul_precision": "highest",
                            "deterministic_algorithms": False,
                            "packages": {"torch": "2.4.0", "numpy": "1.26.4", "lpips": "0.1.4"}}}


def test_differences_equal_is_empty():
    assert differences(record(), record()) == []
    assert differences({}, {}) == []
    real = {"code": source_fingerprint(), "environment": environment()}
    assert differences(real, json.loads(json.dumps(real))) == []


def test_differences_one_line_each():
    old, new = record(), record()
    new["code"].update(source_sha256="9f8e7d6c5b4a" + "1" * 52, git_commit="abcdef0123" + "b" * 30,
                       git_dirty=False, git_diff_sha256=None)
    new["environment"].update(torch="2.5.1", cpu_capability="AVX2")
    new["environment"]["packages"]["torch"] = "2.5.1"
    lines = differences(old, new)
    assert lines == [
        "code: source 1a2b3c4d5e6f (commit 0123456789, dirty) -> 9f8e7d6c5b4a (commit abcdef0123)",
        "torch: 2.4.0 -> 2.5.1",
        "cpu capability: AVX512 -> AVX2",
    ]


def test_differences_other_fields():
    old, new = record(), record()
    new["environment"].update(torch_threads=2, cpu_model="Intel Xeon", device="cuda:1")
    new["environment"]["packages"]["numpy"] = "2.0.0"
    assert differences(old, new) == ["cpu model: AMD EPYC -> Intel Xeon", "torch threads: 8 -> 2",
                                     "numpy: 1.26.4 -> 2.0.0"]
    new["environment"]["device"] = "cpu"
    assert "device: cuda:0 -> cpu" in differences(old, new)
    # same source, other commit (e.g. a commit that touched only docs): the code is the same
    new = record()
    new["code"]["git_commit"] = "b" * 40
    assert differences(old, new) == []


def test_differences_missing_keys_read_not_recorded():
    old, new = record(), record()
    del old["environment"]["cpu_capability"]
    del old["environment"]["packages"]["lpips"]
    del new["environment"]["torch_threads"]
    assert differences(old, new) == ["cpu capability: not recorded -> AVX512",
                                     "torch threads: 8 -> not recorded",
                                     "lpips: not recorded -> 0.1.4"]
    assert differences({"environment": record()["environment"]}, record()) == [
        "code: not recorded -> source 1a2b3c4d5e6f (commit 0123456789, dirty)"]
    lines = differences(record(), {"code": record()["code"]})
    assert "torch: 2.4.0 -> not recorded" in lines
    assert "cpu capability: AVX512 -> not recorded" in lines
    # None is a recorded value, not a missing one
    new = record()
    new["environment"]["cuda"] = None
    assert differences(record(), new) == ["cuda: 12.1 -> none"]


def test_differences_do_not_modify_inputs():
    old, new = record(), record()
    new["environment"]["torch"] = "9"
    snapshot = copy.deepcopy((old, new))
    differences(old, new)
    assert (old, new) == snapshot


def test_short_code():
    fp = record()["code"]
    assert short_code(fp) == "1a2b3c4d5e6f @ 0123456789+dirty"
    fp["git_dirty"] = False
    assert short_code(fp) == "1a2b3c4d5e6f @ 0123456789"
    assert short_code({}) == "not recorded"
    assert short_code(None) == "not recorded"
