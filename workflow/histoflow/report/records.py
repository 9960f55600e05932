"""One record per slide for the report: the cohort table's row (`histoflow.cohort`)
with densities, nucleus areas, pictures, links to the slide's files and QC flags."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from histoflow.cohort import slide_row
from histoflow.export.summary import density
from histoflow.io.instance_table import open_instance_table
from histoflow.paths import LAYOUT, SamplePaths
from histoflow.report.pictures import slide_pictures
from histoflow.report.qc import cohort_flags
from histoflow.report.settings import ReportSettings
from histoflow.report.sizes import area_stats

# Failed slides first, then those not run, then the finished ones.
STATUS_ORDER = {"failed": 0, "missing": 1, "ok": 2}


@dataclass(frozen=True)
class ReportDirs:
    """Where the slides' files are, and the folder of the page (links are relative to it)."""

    results: Path
    logs: Path
    benchmarks: Path
    page: Path


def _href(path: Path, dirs: ReportDirs) -> str:
    return Path(os.path.relpath(path, dirs.page)).as_posix()


def slide_links(paths: SamplePaths, dirs: ReportDirs) -> list[list[str]]:
    """[label, relative href] of every file the slide has: stage files, exports, logs."""
    links = []
    for name in LAYOUT:  # pipeline order
        path = getattr(paths, name)
        if path.exists() and not (path.is_dir() and name == "tiles_dir"):
            links.append([LAYOUT[name], _href(path, dirs)])
    export = paths.root / "export"
    if export.is_dir():
        links += [[f"export/{p.name}", _href(p, dirs)] for p in sorted(export.iterdir())]
    for log in sorted(dirs.logs.glob(f"*/{paths.sample}.log")):
        links.append([f"log {log.parent.name}", _href(log, dirs)])
    return links


def slide_record(sample: str, sheet_row: dict, dirs: ReportDirs, settings: ReportSettings) -> dict:
    """The report's record of one slide (the keys of `histoflow.cohort.slide_row`, plus
    objects_per_mm2, sizes, area_median_um2, pictures and links)."""
    row = slide_row(sample, sheet_row, dirs.results, dirs.logs, dirs.benchmarks)
    paths = SamplePaths(sample, str(dirs.results))
    if "classes" in row:
        row["objects"] = sum(row["classes"].values())
        row["objects_per_mm2"] = density(row["objects"], row.get("tissue_area_mm2"))
        row["sizes"], row["area_median_um2"] = area_stats(
            open_instance_table(paths.instances_parquet)
        )
    row["pictures"] = slide_pictures(paths, settings.thumbnail_px)
    row["links"] = slide_links(paths, dirs)
    return row


def cohort_records(
    sheet: dict[str, dict], dirs: ReportDirs, settings: ReportSettings
) -> list[dict]:
    """Records of every slide with their `flags`: failed first, then sheet order."""
    records = [slide_record(s, row, dirs, settings) for s, row in sheet.items()]
    for record, flags in zip(records, cohort_flags(records, settings)):
        record["flags"] = flags
    return sorted(records, key=lambda r: STATUS_ORDER.get(r["status"], 1))


def class_union(records: list[dict]) -> list[tuple[str, str]]:
    """(task, class) over all records, in order of first appearance (card order)."""
    out: list[tuple[str, str]] = []
    for record in records:
        out += [key for key in record.get("classes", {}) if key not in out]
    return out
