"""The `allocator` command's entry point: Ctrl-C while the command is still loading says "interrupted" too.

The command's modules (numpy, the solver, the Kafka client) take a fraction of a second to import, and a Ctrl-C in
that time printed a KeyboardInterrupt traceback from inside an import (an outside probe). This module imports
nothing heavy itself, so the whole load runs where the interrupt is caught. An interrupt inside a compiled
extension's initialisation comes out as that import's failure (highspy: `ImportError: initialization failed`, caused
by the KeyboardInterrupt), so an error caused by an interrupt is the interrupt too.
"""

from __future__ import annotations

import sys


def _interrupted(exc: BaseException) -> bool:
    """Whether `exc` is, or was caused (directly or through the exceptions it chains to) by, a KeyboardInterrupt."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return True
        seen.add(id(current))
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return False


def main() -> int:
    try:
        from cli.main import main as run

        return run()
    except (KeyboardInterrupt, Exception) as exc:
        if not _interrupted(exc):
            raise
        print("interrupted", file=sys.stderr)
        return 130
