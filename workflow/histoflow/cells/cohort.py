"""Per-class cell summaries of a slide, for the cohort tables.

For each (task, class) of a slide's cells.parquet: the count, the density per mm² of
tissue (mask.json's tissue area) and the median of the main shape and stain
measurements and of the neighbour counts. `histoflow.cohort` puts them into
results/cohort/summary.tsv (one row per slide, columns per class) and writes
results/cohort/cells.tsv (one row per slide and class).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from histoflow.export.summary import density, tsv_text
from histoflow.io.cell_table import NEIGHBOURS_TOTAL, open_cell_table

# Measurements whose median per class goes into the cohort tables.
MEDIAN_COLUMNS = (
    "area_um2",
    "perimeter_um",
    "major_axis_um",
    "minor_axis_um",
    "eccentricity",
    "solidity",
    "circularity",
    "hematoxylin_od_mean",
    "eosin_od_mean",
    NEIGHBOURS_TOTAL,
)
# The ones that also get a column per class in summary.tsv (the others: cells.tsv).
SUMMARY_MEDIANS = ("area_um2", "eccentricity", "circularity", "hematoxylin_od_mean")
CELLS_TSV_COLUMNS = (
    "sample",
    "task",
    "class_name",
    "cells",
    "cells_per_mm2",
    *(f"median_{c}" for c in MEDIAN_COLUMNS),
)


def class_summaries(
    cells_path: str | Path, tissue_area_mm2: float | None
) -> dict[tuple[str, str], dict]:
    """(task, class name) -> {cells, cells_per_mm2, median_<measurement>, and
    median_neighbours_<class> for every neighbour class}; declared classes first."""
    table = open_cell_table(cells_path)
    neighbours = [c for c in table.neighbour_columns if c != NEIGHBOURS_TOTAL]
    frame = table.read(columns=["task", "class_name", *MEDIAN_COLUMNS, *neighbours]).to_pandas()
    out: dict[tuple[str, str], dict] = {}
    declared = [(t, c["name"]) for t, classes in table.meta["tasks"].items() for c in classes]
    found = set(zip(frame["task"], frame["class_name"], strict=True))
    for key in declared + sorted(found - set(declared)):
        rows = frame[(frame["task"] == key[0]) & (frame["class_name"] == key[1])]
        stats = {"cells": len(rows), "cells_per_mm2": density(len(rows), tissue_area_mm2)}
        for column in [*MEDIAN_COLUMNS, *neighbours]:
            values = rows[column].to_numpy(np.float64)
            values = values[np.isfinite(values)]
            stats[f"median_{column}"] = float(np.median(values)) if len(values) else None
        out[key] = stats
    return out


def summary_columns(task: str, name: str) -> list[tuple[str, str]]:
    """(stats key, summary.tsv column) of one class's cell columns."""
    prefix = f"cells_{tsv_text(task)}_{tsv_text(name)}"
    return [(f"median_{m}", f"{prefix}_median_{m}") for m in SUMMARY_MEDIANS] + [
        (f"median_{NEIGHBOURS_TOTAL}", f"{prefix}_median_{NEIGHBOURS_TOTAL}")
    ]
