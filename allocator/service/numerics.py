"""The numeric environment decisions are made in: one BLAS kernel on every x86-64 machine.

numpy's OpenBLAS picks its kernels by the processor it finds (`Haswell` on AVX2 machines, `SkylakeX` on many AVX-512
ones, `Zen`, ...), and the kernels sum in different orders: the same matrix-vector product differs in its last bits
from one to the other. The solver compares such values (a set's CVaR against the budget, an LP's value against the
best so far), so a last bit can change which set it funds: on an AVX-512 machine that OpenBLAS runs with its SkylakeX
kernels, 24 of the 50 recorded solves of tests/golden/solver_rev*.json came out different (15 funded other sizes).
`pin` makes OpenBLAS use its Haswell kernels on every x86-64 machine that has them (AVX2 and FMA: Intel since 2013,
every AMD Zen), the kernels the recorded decisions were made with, so that the allocator and its auditor decide alike.

OpenBLAS reads `OPENBLAS_CORETYPE` once, when numpy loads it: `pin` must run before numpy is imported. The entry
points call it first (`cli`, `benchmarks`, `simulation`, `tests/__init__.py`); this module imports nothing
that loads numpy. A value the user set is kept (a machine without AVX2 must not be given the Haswell kernels, and
one that knows better may choose), and `mismatch` then says that its decisions may differ from other machines'.

What remains machine-dependent is numpy's own vector code (its sorting and partitioning are chosen by the processor
too: AVX-512 and AVX2 machines order ties differently) and other architectures (ARM has no x86 kernels): docs/audit.md
says what an auditor on such a machine sees.
"""

from __future__ import annotations

import os
import platform
import sys

BLAS_CORE_VARIABLE = "OPENBLAS_CORETYPE"
BLAS_CORE = "Haswell"
_X86 = ("x86_64", "amd64")


def _has_avx2_fma() -> bool:
    """Whether this processor has the instructions the Haswell kernels use (Linux's /proc/cpuinfo; elsewhere
    unknown, taken as no)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as stream:
            for line in stream:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return {"avx2", "fma"} <= flags
    except OSError:
        return False
    return False


def pin() -> None:
    """Ask OpenBLAS for the Haswell kernels (module docstring), unless numpy is already loaded, the user chose a
    kernel, or this is not an x86-64 processor with AVX2 and FMA."""
    if "numpy" in sys.modules or BLAS_CORE_VARIABLE in os.environ:
        return
    if platform.machine().lower() in _X86 and _has_avx2_fma():
        os.environ[BLAS_CORE_VARIABLE] = BLAS_CORE


def blas_kernel() -> str | None:
    """The kernel set numpy's OpenBLAS runs with ('Haswell', 'SkylakeX', ...), None when unknown (another BLAS,
    threadpoolctl unable to say)."""
    import numpy  # noqa: F401  (loads OpenBLAS, so that threadpoolctl finds it)
    import threadpoolctl

    for library in threadpoolctl.threadpool_info():
        if library.get("internal_api") == "openblas":
            kernel = library.get("architecture")
            return str(kernel) if kernel else None
    return None


def mismatch() -> str | None:
    """Why this process may decide differently from the project's machines (a sentence), or None."""
    if platform.machine().lower() not in _X86:
        return f"a {platform.machine()} processor: numpy's BLAS and vector code differ from x86-64's"
    kernel = blas_kernel()
    if kernel is None:
        return "numpy's BLAS is not an OpenBLAS whose kernels could be chosen: its solves may differ in the last bits"
    if kernel.lower() == BLAS_CORE.lower():
        return None
    return (
        f"numpy's OpenBLAS runs its {kernel} kernels, not {BLAS_CORE} "
        f"({BLAS_CORE_VARIABLE}={os.environ.get(BLAS_CORE_VARIABLE, 'unset')}, or numpy was loaded before the "
        "allocator could ask): its solves may differ in the last bits, and then in what they fund"
    )
