"""nerfacc, the peer the compositing benchmark times against, with its CUDA extension built.

nerfacc 0.5.3 (PyPI) ships CUDA sources that it compiles on first use of a CUDA op, not at import,
so an unbuilt nerfacc would start a minutes-long build inside a timed benchmark. And under C++20,
which torch's extension builder passes, that build fails: nerfacc's helper `lerp(float, float,
float)` (defined in csrc/include/utils_math.cuh, called nowhere) collides with `std::lerp` from
<cmath>. `load_nerfacc()` builds the same sources with the helper renamed, once (cached by torch
under TORCH_EXTENSIONS_DIR), and hands the module to nerfacc as the prebuilt extension it looks for
first (`nerfacc.csrc`). Nothing else in nerfacc's code changes.

    python -m tests.bench.nerfacc_peer    # build now (about a minute on 16 cores), print the outcome
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from pathlib import Path

from kernels._impl import build_once

RENAMED = "nerfacc_lerp"


def _is_patched(header: Path) -> bool:
    if not header.is_file():
        return False
    text = header.read_text()
    return RENAMED in text and not re.search(r"\blerp\(", text)


def _patched_sources(csrc: Path, dest: Path) -> list[Path]:
    """Copy nerfacc's csrc to `dest` with the `lerp` helpers renamed; returns the sources to build.
    A copy already patched is left as it is: rewriting it would make every process rebuild (the
    build is cached by the sources' times)."""
    header = dest / "include" / "utils_math.cuh"
    if not _is_patched(header):
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(csrc, dest)
        text = header.read_text()
        if not re.search(r"\blerp\(", text):
            raise RuntimeError(f"nerfacc's {header.name} defines no lerp(): another nerfacc version? "
                               f"(sources at {csrc})")
        header.write_text(re.sub(r"\blerp\(", f"{RENAMED}(", text))
    return sorted(dest.glob("*.cu")) + sorted(dest.glob("*.cpp"))


@build_once
def load_nerfacc():
    """The nerfacc module with a working CUDA extension; raises RuntimeError saying why not. The
    outcome, a failure too, is kept for the process (build_once): each benchmark case asks, and a
    failed build must not be tried again (minutes) for every one."""
    return _load()


def _load():
    try:
        import nerfacc
    except ImportError as exc:
        raise RuntimeError(f"nerfacc is not installed ({exc}); pip install nerfacc==0.5.3") from exc
    try:
        from nerfacc import csrc  # a wheel built with its extension
        return nerfacc
    except ImportError:
        pass
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, _get_build_directory, load

    if not torch.cuda.is_available():
        raise RuntimeError("nerfacc's CUDA ops need a CUDA GPU")
    if CUDA_HOME is None:
        raise RuntimeError("no CUDA toolkit (nvcc) to build nerfacc's extension: set CUDA_HOME")
    csrc = Path(nerfacc.__file__).parent / "cuda" / "csrc"
    name = "nerfacc_peer_" + re.sub(r"\W", "_", getattr(nerfacc, "__version__", "unknown"))
    sources = _patched_sources(csrc, Path(_get_build_directory(name, verbose=False)).parent / f"{name}_src")
    try:
        module = load(name=name, sources=[str(s) for s in sources], extra_cflags=["-O3"],
                      extra_cuda_cflags=["-O3"], verbose=False)
    except Exception as exc:  # a compile error: the reason the benchmark skips
        raise RuntimeError(f"building nerfacc's CUDA extension failed: {str(exc)[-1500:]}") from exc
    sys.modules["nerfacc.csrc"] = module
    nerfacc.csrc = module
    from nerfacc.cuda._backend import _C

    if _C is not module:
        raise RuntimeError("nerfacc did not take the built extension (nerfacc.cuda._backend._C)")
    return nerfacc


if __name__ == "__main__":
    t0 = time.perf_counter()
    try:
        mod = load_nerfacc()
    except RuntimeError as err:
        print(f"nerfacc: not usable: {err}")
        sys.exit(1)
    print(f"nerfacc {getattr(mod, '__version__', '?')}: extension ready in {time.perf_counter() - t0:.0f} s")
