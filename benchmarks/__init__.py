"""Benchmarks: run by make targets, print tables of medians and ratios; never part of the test suite."""
