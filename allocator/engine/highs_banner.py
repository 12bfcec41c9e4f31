"""Keeps HiGHS's start-up banner off standard output, where `allocator allocate` prints its JSON decision.

HiGHS prints the banner from C++ when the process constructs its first solver, before any option can turn
output off; later constructions are silent. So the first one is made here with file descriptor 1 pointed at
the null device for the moment it takes.
"""

from __future__ import annotations

import ctypes
import os
import sys
from functools import cache


@cache
def silence_highs_banner() -> None:
    import highspy

    sys.stdout.flush()
    saved = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        highspy.Highs()  # type: ignore[no-untyped-call]
    finally:
        ctypes.CDLL(None).fflush(None)  # the banner sits in C's stdout buffer until flushed
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)
