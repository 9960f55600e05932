"""Streaming tile writers keep memory flat: peak RSS growth well under the data written."""

from __future__ import annotations

import pytest
from histoflow.synthetic.writer_load import measure


@pytest.mark.parametrize("fmt", ["zarr", "hdf5", "npz"])
def test_writer_memory_does_not_follow_the_tile_count(tmp_path, fmt):
    # 40k tiles x 256 float32 = 41 MB of features; a writer that kept the rows would
    # grow by at least that.
    n, d = 40_000, 256
    result = measure(fmt, n, d, tmp_path / f"tiles-{fmt}")
    assert result["growth"] < 0.5 * n * d * 4, result
