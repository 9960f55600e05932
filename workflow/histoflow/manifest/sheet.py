"""One sample-sheet row as plain Python values, for rule params and the manifest.

Snakemake's params rerun trigger compares plain values; a numpy or pandas scalar
would escape it, so every value is cast here, once.
"""

from __future__ import annotations

from collections.abc import Mapping


def sheet_record(row: Mapping) -> dict:
    """`path` as str, `mpp` as float, `mask` as str; an empty cell (None, "") is None."""
    mpp, mask = row.get("mpp"), row.get("mask")
    return {
        "path": str(row["path"]),
        "mpp": float(mpp) if mpp else None,
        "mask": str(mask) if mask else None,
    }
