"""Synthetic checkpoints in the exact published format, for tests and benchmarks."""
