"""Runs the streaming benchmark (fold, serve, replay; see `benchmarks.stream`) under its historical name."""

from __future__ import annotations

import sys

from benchmarks.stream.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
