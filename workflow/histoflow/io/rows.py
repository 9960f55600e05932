"""Row ranges of a parquet file, streamed from the row groups that hold them.

The cells stage and its exports read the instance table and cells.parquet in chunks of
rows (`iter_rows`, `read_rows`), so memory stays at one chunk whatever the table.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


def iter_rows(
    path: str | Path, start: int, stop: int, columns, batch_size: int = 4096
) -> Iterator[dict[str, np.ndarray]]:
    """Rows start..stop of a parquet file as consecutive pieces (column -> array),
    streamed from the row groups that hold them, so memory stays at one piece."""
    pf = pq.ParquetFile(path)
    groups, offset, first = [], 0, None
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if offset + n > start and offset < stop:
            groups.append(g)
            first = offset if first is None else first
        offset += n
    if not groups:
        return
    row = first
    for batch in pf.iter_batches(batch_size=batch_size, row_groups=groups, columns=list(columns)):
        a, b = max(start - row, 0), min(stop - row, batch.num_rows)
        row += batch.num_rows
        if b > a:
            piece = batch.slice(a, b - a)
            yield {c: piece.column(c).to_numpy(zero_copy_only=False) for c in columns}
        if row >= stop:
            return


def read_rows(path: str | Path, start: int, stop: int, columns) -> dict[str, np.ndarray]:
    """Rows start..stop of a parquet file (column -> array)."""
    pieces = list(iter_rows(path, start, stop, columns))
    if not pieces:
        return {c: np.empty(0, object) for c in columns}
    return {c: np.concatenate([p[c] for p in pieces]) for c in columns}
