"""Content of result files whose bytes may differ between runs that agree.

Each decoder returns a value whose `repr` is equal for two files with the same
content; `DECODERS` maps a file suffix to its decoder.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from pathlib import Path

# Columns of the cohort table that are wall times (end in "_s").
TIMING_SUFFIX = "_s"


def decode_tsv(path: Path) -> list[list[str]]:
    """Rows of a TSV without wall-time columns (`*_s`): the cohort table."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    if not rows:
        return rows
    keep = [i for i, name in enumerate(rows[0]) if not name.endswith(TIMING_SUFFIX)]
    return [[row[i] for i in keep if i < len(row)] for row in rows]


def decode_html(path: Path) -> str:
    """Cohort pages without wall times: table cells and the report's JSON block of
    times, marked class="time"."""
    text = path.read_text(encoding="utf-8")
    return re.sub(r'<(td|th|script)\b[^>]*\bclass="time"[^>]*>.*?</\1>', "", text, flags=re.S)


def _h5_attrs(obj) -> dict:
    import numpy as np

    return {k: np.asarray(v).tolist() for k, v in sorted(obj.attrs.items())}


def decode_hdf5(path: Path) -> dict:
    """Attributes and data of every group and dataset, by name."""
    import h5py
    import numpy as np

    items = {}
    with h5py.File(path, "r") as fh:
        items["/"] = (_h5_attrs(fh), None)

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                data = np.asarray(obj[()])
                items[name] = (_h5_attrs(obj), str(data.dtype), data.shape, data.tobytes())
            else:
                items[name] = (_h5_attrs(obj), None)

        fh.visititems(visit)
    return items


def decode_sqlite(path: Path) -> list[str]:
    """The SQL dump of the database: schema and rows, not page layout."""
    import sqlite3

    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(con.iterdump())
    finally:
        con.close()


def decode_tiff(path: Path) -> list[tuple]:
    """Shape and pixel bytes of every page."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return [(page.shape, page.asarray().tobytes()) for page in tif.pages]


def decode_parquet(path: Path) -> list[dict]:
    """Every row as a dict."""
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


# Formats compared by content when their bytes differ, with the reason they may.
DECODERS: dict[str, Callable[[Path], object]] = {
    ".tsv": decode_tsv,  # cohort summary: wall-time columns differ on every run
    ".html": decode_html,  # cohort summary table and report page: same
    ".h5": decode_hdf5,  # HDF5 object headers may carry modification times
    ".hdf5": decode_hdf5,
    ".sqlite": decode_sqlite,  # page layout may differ, rows must not
    ".db": decode_sqlite,
    ".tif": decode_tiff,  # a DateTime tag may be written
    ".tiff": decode_tiff,
    ".parquet": decode_parquet,  # created_by holds the writer version
}
