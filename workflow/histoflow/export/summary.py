"""Per-slide summary TSV: one header line and one row, so a cohort table is a concat.

Columns: sample, slide size and resolution, tissue area (mask.json), number of patches
(raw.zarr `boxes`), objects and objects per mm² of tissue for every class, and the
wall time of each stage from Snakemake's benchmark files (column `s`). Wall times are
the only columns that differ between reruns; `timings=False` leaves them out.

The per-class counts and densities (`class_counts`, `object_columns`) and the cell
formatting (`format_cell`) are the ones the cohort table uses too.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from histoflow.config import schema_defaults
from histoflow.export import ExportError
from histoflow.io.atomic import atomic_output
from histoflow.io.instance_table import InstanceTable, open_instance_table
from histoflow.io.maps_zarr import read_maps_attrs
from histoflow.io.mask_files import read_mask_meta
from histoflow.io.raw_zarr import open_raw
from histoflow.manifest.benchmarks import BenchmarkError, read_benchmark

# Decimal places of float columns (fixed formatting keeps reruns byte-identical).
DIGITS = {"slide_mpp": 4, "tissue_fraction": 4, "tissue_area_mm2": 4}
DEFAULT_DIGITS = 2


def count_patches(store: str | Path) -> int | None:
    """The patches inference ran on: maps.zarr's `patches` attribute (merge records it,
    as raw.zarr may be temporary), else the rows of raw.zarr's `boxes`; None for a
    maps.zarr written before merge recorded it."""
    attrs = read_maps_attrs(store) or {}
    if "patches" in attrs:
        return int(attrs["patches"])
    if (Path(store) / "coverage").exists():  # a maps.zarr
        return None
    return len(open_raw(store))


def stage_seconds(benchmark: str | Path) -> float | None:
    """Mean wall time (column `s`) of a Snakemake benchmark file (one row per repeat)."""
    try:
        return read_benchmark(benchmark)["s"]
    except BenchmarkError as exc:
        raise ExportError(str(exc)) from exc


def time_column(rule: str) -> str:
    """Name of the wall-time column of `rule` (seconds)."""
    return f"time_{rule}_s"


def class_counts(table: InstanceTable) -> dict[tuple[str, str], int]:
    """(task, class name) -> objects: declared classes in card order, then any others sorted."""
    found: Counter = Counter()
    for batch in table.batches(columns=("task", "class_name")):
        found.update(zip(batch["task"], batch["class_name"], strict=True))
    classes = table.classes()
    classes += sorted(set(found) - set(classes))
    return {key: found.get(key, 0) for key in classes}


def density(count: int, area_mm2: float | None) -> float | None:
    """Objects per mm² of tissue; None without tissue."""
    return count / area_mm2 if area_mm2 and area_mm2 > 0 else None


def tsv_text(value) -> str:
    """`value` as one TSV field: a tab, newline or carriage return would shift columns."""
    return str(value).replace("\t", " ").replace("\n", " ").replace("\r", " ")


def class_columns(task: str, name: str) -> tuple[str, str]:
    """Names of the count and density columns of one class (header keys are fields too)."""
    task, name = tsv_text(task), tsv_text(name)
    return f"objects_{task}_{name}", f"density_{task}_{name}_per_mm2"


def object_columns(counts: dict[tuple[str, str], int], area_mm2: float | None) -> dict:
    """`objects`, `objects_per_mm2` and the count and density of every class in `counts`."""
    total = sum(counts.values())
    columns: dict = {"objects": total, "objects_per_mm2": density(total, area_mm2)}
    for (task, name), n in counts.items():
        count_col, density_col = class_columns(task, name)
        columns[count_col] = n
        columns[density_col] = density(n, area_mm2)
    return columns


def format_cell(value, digits: int = DEFAULT_DIGITS) -> str:
    """One TSV cell: empty for None or a non-finite float, floats with `digits` places."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return tsv_text(value)


def format_row(row: dict) -> dict[str, str]:
    """Every value of `row` formatted as a cell, with the column's decimal places."""
    return {key: format_cell(value, DIGITS.get(key, DEFAULT_DIGITS)) for key, value in row.items()}


# mask.json fields the summary reads.
MASK_FIELDS = ("slide_dimensions", "mpp", "tissue_fraction", "tissue_area_mm2")


def _slide_columns(mask: dict, path: str | Path) -> dict:
    missing = [key for key in MASK_FIELDS if key not in mask]
    if missing:
        raise ExportError(f"file '{path}': no {', '.join(map(repr, missing))}")
    width, height = mask["slide_dimensions"]
    return {
        "slide_width": int(width),
        "slide_height": int(height),
        "slide_mpp": float(mask["mpp"]),
        "tissue_fraction": float(mask["tissue_fraction"]),
        "tissue_area_mm2": float(mask["tissue_area_mm2"] or 0.0),
    }


def summarize(
    sample: str,
    mask_json: str | Path,
    instances: str | Path,
    maps: str | Path | None = None,
    benchmarks: dict[str, str | Path] | None = None,
    timings: bool | None = None,
) -> dict[str, str]:
    """The summary row as ordered column -> formatted value.

    `timings` None takes the config schema's `export.summary_timings`.
    """
    if timings is None:
        timings = schema_defaults("export")["summary_timings"]
    mask = read_mask_meta(mask_json)
    table = open_instance_table(instances)
    row: dict = {
        "sample": sample,
        "model": table.meta.get("model"),
        **_slide_columns(mask, mask_json),
    }
    if maps is not None:
        row["patches"] = count_patches(maps)
    row |= object_columns(class_counts(table), row["tissue_area_mm2"])
    if timings:
        for rule, path in (benchmarks or {}).items():
            row[time_column(rule)] = stage_seconds(path)
    return format_row(row)


def write_summary(row: dict[str, str], out_path: str | Path) -> None:
    """Write the header line and the row of `summarize` as a TSV."""
    with atomic_output(out_path) as tmp:
        Path(tmp).write_text(
            "\t".join(row) + "\n" + "\t".join(row.values()) + "\n", encoding="utf-8"
        )
