"""The command line: one console script, `allocator`, one subcommand per job. The top layer: nothing imports it."""

try:
    from allocator.service.numerics import pin

    # Before anything loads numpy: the BLAS kernels every decision is made with (allocator/service/numerics.py).
    pin()
except KeyboardInterrupt:  # Ctrl-C as the command starts (cli/entry.py): said, not a traceback
    import sys

    print("interrupted", file=sys.stderr)
    raise SystemExit(130) from None
