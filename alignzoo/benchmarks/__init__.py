"""Benchmarks: prompt sets, suites, the runner, evaluation and the perf benchmark."""
