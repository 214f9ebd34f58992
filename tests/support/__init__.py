"""Reusable helpers for the test suite and the benchmark scripts in loadtests/.

Nothing in this package imports pytest, so scripts can use it as a plain library.
"""
