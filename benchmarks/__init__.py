"""Benchmarks: run each with `python -m benchmarks.NAME` from the repository root."""
