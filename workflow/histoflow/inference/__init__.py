"""Patch inference: the patch grid, the patch dataset and the batched runner."""
