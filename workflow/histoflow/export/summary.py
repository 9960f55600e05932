"""Per-slide summary TSV: one header line and one row, so a cohort table is a concat.

Columns: sample, slide size and resolution, tissue area (mask.json), number of patches
(raw.zarr `boxes`), objects and objects per mm² of tissue for every class, and the
wall time of each stage from Snakemake's benchmark files (column `s`). Wall times are
the only columns that differ between reruns; `timings=False` leaves them out.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

from histoflow.export import ExportError
from histoflow.io.atomic import atomic_output
from histoflow.io.instance_table import open_instance_table


def count_patches(raw_path: str | Path) -> int:
    import zarr

    try:
        boxes = zarr.open_array(store=str(Path(raw_path) / "boxes"), mode="r")
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise ExportError(f"file '{raw_path}': no 'boxes' array ({exc})") from exc
    return int(boxes.shape[0])


def stage_seconds(benchmark: str | Path) -> float:
    """Mean wall time (column `s`) of a Snakemake benchmark file (one row per repeat)."""
    lines = Path(benchmark).read_text().splitlines()
    if len(lines) < 2:
        raise ExportError(f"file '{benchmark}': benchmark file has no data row")
    header = lines[0].split("\t")
    if "s" not in header:
        raise ExportError(f"file '{benchmark}': benchmark file has no column 's'")
    col = header.index("s")
    values = [float(line.split("\t")[col]) for line in lines[1:] if line.strip()]
    return sum(values) / len(values)


def _fmt(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def summarize(
    sample: str,
    mask_json: str | Path,
    instances: str | Path,
    raw: str | Path | None = None,
    benchmarks: dict[str, str | Path] | None = None,
    timings: bool = True,
) -> dict[str, str]:
    """The summary row as ordered column -> formatted value."""
    mask = json.loads(Path(mask_json).read_text())
    table = open_instance_table(instances)
    counts: Counter = Counter()
    for batch in table.batches(columns=("task", "class_name")):
        counts.update(zip(batch["task"], batch["class_name"], strict=True))
    classes = table.classes()
    classes += sorted(set(counts) - set(classes))
    area = float(mask.get("tissue_area_mm2") or 0.0)
    width, height = mask["slide_dimensions"]
    row: dict[str, object] = {
        "sample": sample,
        "model": table.meta.get("model"),
        "slide_width": int(width),
        "slide_height": int(height),
        "slide_mpp": (float(mask["mpp"]), 4),
        "tissue_fraction": (float(mask.get("tissue_fraction", 0.0)), 4),
        "tissue_area_mm2": (area, 4),
    }
    if raw is not None:
        row["patches"] = count_patches(raw)
    row["objects"] = table.num_rows
    row["objects_per_mm2"] = (table.num_rows / area if area > 0 else None, 2)
    for task, name in classes:
        n = counts.get((task, name), 0)
        row[f"objects_{task}_{name}"] = n
        row[f"density_{task}_{name}_per_mm2"] = (n / area if area > 0 else None, 2)
    if timings:
        for rule, path in (benchmarks or {}).items():
            row[f"time_{rule}_s"] = (stage_seconds(path), 2)
    out = {}
    for key, value in row.items():
        if isinstance(value, tuple):
            value = _fmt(*value)
        out[key] = "" if value is None else str(value).replace("\t", " ")
    return out


def write_summary(row: dict[str, str], out_path: str | Path) -> None:
    with atomic_output(out_path) as tmp:
        Path(tmp).write_text(
            "\t".join(row) + "\n" + "\t".join(row.values()) + "\n", encoding="utf-8"
        )
