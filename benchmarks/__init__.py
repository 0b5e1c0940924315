"""Benchmark scripts: run from the repository root as `python -m benchmarks.<name>`.

What each measures and the figures so far: BENCHMARKS.md.
"""
