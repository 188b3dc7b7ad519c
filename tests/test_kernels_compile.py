"""The Triton kernels compile for an H100 (sm_90) down to a cubin, without a GPU, and spill no
registers at the GPU block sizes they launch with (kernels.triton.BLOCKS).

The interpreter (TRITON_INTERPRET=1), which the correctness tests use on the CPU, accepts code
that the compiler rejects (e.g. a reassigned constexpr); this ahead-of-time compile catches that
on a CPU-only machine. Register use and stack (spill) size come from the cubin
(`cuobjdump --dump-resource-usage`, shipped with Triton): a spilling kernel moves its registers
through local memory, which a bandwidth-bound kernel cannot afford. About 10 s on 2 cores (Triton
caches the cubins). The compile runs in a subprocess, since kernels defined under
TRITON_INTERPRET are interpreted. `python tests/test_kernels_compile.py` prints each variant's
registers and stack.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _variants():
    """(label, kernel, pointer/scalar types, constexprs) for every specialisation the ops launch."""
    from kernels.triton import BLOCKS, padded_cols, row_block
    from kernels.triton import composite as C
    from kernels.triton import grid as G
    from kernels.triton import tv as T

    br, bs = BLOCKS["composite_rays"][1], BLOCKS["composite_samples"][1]

    f32p, i64p, i32p = "*fp32", "*i64", "*i32"

    def types(fn, **extra):
        t = {n: f32p for n in fn.arg_names if n.endswith("_ptr")}
        t.update(extra)
        return t

    comp = dict(start_ptr=i64p, count_ptr=i64p, delta_val="fp32", n_rays="i32")
    for has_delta in (True, False):
        for shade in (True, False):
            yield (f"composite fwd delta={has_delta} shade={shade}", C._fwd, types(C._fwd, **comp),
                   dict(HAS_DELTA=has_delta, HAS_T=True, WRITE_W=shade, WRITE_T=not shade, SHADE=shade,
                        BLOCK_R=br, BLOCK_S=bs))
        yield (f"composite bwd delta={has_delta}", C._bwd, types(C._bwd, **comp),
               dict(HAS_DELTA=has_delta, HAS_T=True, HAS_GW=True, D_DELTA=has_delta, D_T=True,
                    BLOCK_R=br, BLOCK_S=bs))
    ints = dict(index_ptr=i64p, S="i32", C="i32")
    yield ("interpolate fwd", G._interp_fwd, types(G._interp_fwd, **ints),
           dict(K=8, BLOCK_S=row_block("samples", "cuda", 32), CP=32))
    yield ("interpolate bwd", G._interp_bwd, types(G._interp_bwd, **ints),
           dict(K=8, D_FEAT=True, D_WEIGHT=True, BLOCK_S=row_block("samples", "cuda", 32), CP=32))
    st = types(G._sample_sh, links_ptr=i32p, ray_ptr=i64p, S="i32", X="i32", Y="i32", Z="i32")
    for nb in (1, 9, 16):
        cp = padded_cols(3 * nb)
        for bw in (False, True):
            yield (f"sample_grid_sh B={nb} backward={bw}", G._sample_sh, st,
                   dict(NB=nb, HAS_LINKS=True, HAS_RAY=True, SIGMOID=True, BACKWARD=bw, D_DENS=bw,
                        D_SH=bw, BLOCK_S=row_block("samples", "cuda", cp), CP=cp))
    tt = types(T._tv, row_ptr=i64p, nb_ptr=i64p, M="i32", C="i32", eps="fp32")
    for cp in (32, 64):  # SH degree 2 (27 channels) and 3 (48)
        for bw in (False, True):
            yield (f"tv {cp} columns backward={bw}", T._tv, tt,
                   dict(L2=True, BACKWARD=bw, BLOCK_M=row_block("tv", "cuda", cp), CP=cp))


def resource_usage(cubin: bytes) -> dict[str, int]:
    """{'REG': registers per thread, 'STACK': bytes of stack (spills), ...} of a one-kernel cubin."""
    import re
    import tempfile

    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(tool), "--dump-resource-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
    return {k: int(v) for k, v in re.findall(r"\b([A-Z]+):(\d+)", out)}


def compile_all() -> tuple[list[str], list[str]]:
    """Compile every variant for sm_90: (one line per variant with its registers and stack,
    the failures: compile errors and spills)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", 90, 32)
    lines, failures = [], []
    for label, fn, types, consts in _variants():
        sig = {n: ("constexpr" if n in consts else types.get(n, "i32")) for n in fn.arg_names}
        src = ASTSource(fn=fn, signature=sig,
                        constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
        try:
            kernel = triton.compile(src, target=target)
            assert kernel.asm.get("cubin"), "no cubin"
        except Exception as exc:  # report all kernels, not only the first failure
            failures.append(f"{label}: {type(exc).__name__}: {str(exc)[-600:]}")
            continue
        use = resource_usage(kernel.asm["cubin"])
        lines.append(f"{label:45s} {use.get('REG')} registers, {use.get('STACK')} bytes of stack")
        if use.get("STACK", 0) > 0:
            failures.append(f"{label}: spills ({use['STACK']} bytes of stack, {use.get('REG')} registers): "
                            f"shrink its block in kernels.triton.BLOCKS")
    return lines, failures


def test_triton_kernels_compile_for_sm90_without_spills():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, __file__], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "compiled" in proc.stdout


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    usage, errors = compile_all()
    print("\n".join(usage))
    if errors:
        print("\n\n".join(errors))
        sys.exit(1)
    print("compiled", sum(1 for _ in _variants()), "kernel variants for sm_90, none spills")
