"""The `allocator` command's entry point: Ctrl-C while the command is still loading says "interrupted" too.

The command's modules (numpy, the solver, the Kafka client) take a fraction of a second to import, and a Ctrl-C in
that time printed a KeyboardInterrupt traceback from inside an import (an outside probe). This module imports
nothing heavy itself, so the whole load runs where the interrupt is caught.
"""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from cli.main import main as run

        return run()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
