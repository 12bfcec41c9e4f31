"""Benchmarks: run by make targets, print tables of medians and ratios; never part of the test suite."""

from allocator.service.numerics import pin

# Before anything loads numpy: the BLAS kernels every decision is made with (allocator/service/numerics.py).
pin()
