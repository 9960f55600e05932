"""Streaming tile writers keep memory flat: peak RSS growth well under the data written."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import REPO


def _bench():
    spec = importlib.util.spec_from_file_location(
        "bench_writers", REPO / "benchmarks/bench_writers.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("fmt", ["zarr", "hdf5", "npz"])
def test_writer_memory_does_not_follow_the_tile_count(tmp_path, fmt):
    # 40k tiles x 256 float32 = 41 MB of features; a writer that kept the rows would
    # grow by at least that. Measured (benchmarks/bench_writers.py): 5-16 MB, flat in N.
    n, d = 40_000, 256
    result = _bench().run_one(fmt, n, d, tmp_path)
    assert result["growth"] < 0.5 * n * d * 4, result
