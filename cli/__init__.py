"""The command line: one console script, `allocator`, one subcommand per job. The top layer: nothing imports it."""

from allocator.service.numerics import pin

# Before anything loads numpy: the BLAS kernels every decision is made with (allocator/service/numerics.py).
pin()
