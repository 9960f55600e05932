"""Synthetic data with known ground truth, for tests and benchmarks."""
