"""Cohort table: one row per slide, built from whatever per-slide files exist.

Columns: sample, status, error, slide geometry and tissue area (mask.json), number of
patches (raw.zarr `boxes`), objects and objects per mm² of tissue, in total and per
class (instances.parquet, counted as the export summary counts them), per class the
median nucleus area, eccentricity, circularity, haematoxylin OD and neighbour count
(cells.parquet, `cells_<task>_<class>_median_<measurement>`), and wall seconds per
rule (benchmark files, columns `time_<rule>_s`). Only the `time_*_s` columns differ
between reruns. results/cohort/cells.tsv has one line per slide and class: count,
density per mm² of tissue and medians (`histoflow.cells.cohort`).

Status of a slide:
- ok: its manifest exists, so every enabled stage finished for it;
- failed: a log of the slide reports an error, or its slide file is missing;
- missing: neither (not run yet, or stopped before its jobs started).

`write_summary` is the stage's entry: it writes the TSV and the HTML page.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from histoflow.cells.cohort import CELLS_TSV_COLUMNS, class_summaries, summary_columns
from histoflow.export.summary import (
    DEFAULT_DIGITS,
    DIGITS,
    class_columns,
    class_counts,
    count_patches,
    format_cell,
    object_columns,
    time_column,
)
from histoflow.io.atomic import atomic_output
from histoflow.io.instance_table import open_instance_table
from histoflow.io.mask_files import read_mask_meta
from histoflow.manifest.benchmarks import rule_timings
from histoflow.paths import SamplePaths, log_path

BASE_COLUMNS = (
    "sample",
    "status",
    "error",
    "slide",
    "slide_width",
    "slide_height",
    "slide_mpp",
    "mpp_source",
    "tissue_fraction",
    "tissue_area_mm2",
    "patches",
    "objects",
    "objects_per_mm2",
)
# mask.json fields copied into the row as they are.
MASK_COLUMNS = ("mpp_source", "tissue_fraction", "tissue_area_mm2")
# Pipeline order for the wall-time columns; other rules follow alphabetically.
RULE_ORDER = (
    "mask_tissue",
    "infer_patches",
    "merge_patches",
    "extract_instances",
    "measure_cells",
    "cells_anndata",
)
LAST_RULES = ("write_manifest",)
TOTAL_TIME = "time_total_s"
# Decimal places of the cells table's values.
CELL_DIGITS = 4
STATUSES = ("ok", "failed", "missing")


def _error_in(log: Path) -> str | None:
    """The last error line of one rule log, prefixed with the rule."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    message = None
    for i, line in enumerate(lines):
        if " ERROR " in line:
            # "<time> ERROR histoflow.<rule>: message"
            message = line.split(": ", 1)[-1].strip()
        elif line.startswith("Traceback (most recent call last)"):
            message = next((t for t in reversed(lines[i:]) if t.strip()), line).strip()
    return None if message is None else f"{log.parent.name}: {message}"


def log_error(logs_dir: Path, sample: str) -> str | None:
    """The last error line in the slide's rule logs (logs/<rule>/<sample>.log), if any."""
    message = None
    for log in sorted(Path(logs_dir).glob(log_path("*", sample, ".").as_posix())):
        message = _error_in(log) or message
    return message


def slide_status(paths: SamplePaths, sheet_row: dict, logs_dir: Path) -> dict:
    """`status` and, unless ok, `error` of one slide."""
    if paths.manifest_json.is_file():
        return {"status": "ok"}
    error = log_error(logs_dir, paths.sample)
    path = sheet_row.get("path")
    if error is None and path and not Path(path).exists():
        error = f"slide file not found: {path}"
    return {"status": "failed" if error else "missing", "error": error}


def mask_facts(paths: SamplePaths) -> dict:
    """Slide geometry and tissue area from mask.json; {} when the mask stage has not run."""
    if not paths.mask_json.is_file():
        return {}
    mask = read_mask_meta(paths.mask_json)
    width, height = mask.get("slide_dimensions") or (None, None)
    facts = {"slide_width": width, "slide_height": height, "slide_mpp": mask.get("mpp")}
    return facts | {key: mask.get(key) for key in MASK_COLUMNS}


def _patches(paths: SamplePaths) -> int | None:
    """Patches inference ran on (maps.zarr records them; raw.zarr may be temporary);
    None when neither store is there."""
    for store in (paths.maps_zarr, paths.raw_zarr):
        if store.exists():
            return count_patches(store)
    return None


def slide_row(
    sample: str,
    sheet_row: dict,
    results_dir: str | os.PathLike = "results",
    logs_dir: str | os.PathLike = "logs",
    benchmarks_dir: str | os.PathLike = "benchmarks",
) -> dict:
    """Unformatted values of one slide's row; absent files leave their columns empty.

    `classes` holds the per-class object counts when the instance table exists,
    `times` the wall seconds per rule.
    """
    paths = SamplePaths(sample, str(results_dir))
    row: dict = {"sample": sample, "slide": sheet_row.get("path")}
    row |= slide_status(paths, sheet_row, Path(logs_dir))
    row |= mask_facts(paths)
    row["patches"] = _patches(paths)
    if paths.instances_parquet.is_file():
        row["classes"] = class_counts(open_instance_table(paths.instances_parquet))
    if paths.cells_parquet.is_file():
        row["cells"] = class_summaries(paths.cells_parquet, row.get("tissue_area_mm2"))
    row["times"] = {rule: t["s"] for rule, t in rule_timings(benchmarks_dir, sample).items()}
    return row


def rule_key(rule: str) -> tuple:
    """Sort key of a rule name: pipeline order first, write_manifest last, others between."""
    if rule in RULE_ORDER:
        return (0, RULE_ORDER.index(rule), rule)
    if rule in LAST_RULES:
        return (2, LAST_RULES.index(rule), rule)
    return (1, 0, rule)


def _union(keys_per_row) -> list:
    """Keys in order of first appearance over all rows."""
    out: list = []
    for keys in keys_per_row:
        out += [key for key in keys if key not in out]
    return out


def _row_values(
    row: dict, classes: list[tuple[str, str]], cell_classes: list, rules: list[str]
) -> dict:
    """Every column of one row: base facts, objects per class (over `classes`), cell
    medians per class, times."""
    values = dict(row)
    if "classes" in row:
        counts = {key: row["classes"].get(key, 0) for key in classes}
        values |= object_columns(counts, row.get("tissue_area_mm2"))
    for key in cell_classes:
        stats = row.get("cells", {}).get(key, {})
        values |= {column: stats.get(stat) for stat, column in summary_columns(*key)}
    times = {time_column(rule): row["times"].get(rule) for rule in rules}
    values |= times
    known = [t for t in times.values() if t is not None]
    values[TOTAL_TIME] = sum(known) if row["times"] else None
    return values


def slide_rows(
    sheet: dict[str, dict],
    results_dir: str | os.PathLike = "results",
    logs_dir: str | os.PathLike = "logs",
    benchmarks_dir: str | os.PathLike = "benchmarks",
) -> list[dict]:
    """`slide_row` of every slide of the sheet, in sheet order."""
    return [slide_row(s, r, results_dir, logs_dir, benchmarks_dir) for s, r in sheet.items()]


def cohort_table(
    sheet: dict[str, dict],
    results_dir: str | os.PathLike = "results",
    logs_dir: str | os.PathLike = "logs",
    benchmarks_dir: str | os.PathLike = "benchmarks",
    rows: list[dict] | None = None,
) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows, in sheet order; class and time columns are the union.
    `rows`: the slides' `slide_row`s, when already read."""
    if rows is None:
        rows = slide_rows(sheet, results_dir, logs_dir, benchmarks_dir)
    classes = _union(row.get("classes", {}) for row in rows)
    cell_classes = _union(row.get("cells", {}) for row in rows)
    rules = sorted({rule for row in rows for rule in row["times"]}, key=rule_key)
    header = list(BASE_COLUMNS)
    for task, name in classes:
        header += class_columns(task, name)
    for key in cell_classes:
        header += [column for _, column in summary_columns(*key)]
    header += [time_column(rule) for rule in rules] + [TOTAL_TIME]
    table = []
    for row in rows:
        values = _row_values(row, classes, cell_classes, rules)
        table.append([format_cell(values.get(c), DIGITS.get(c, DEFAULT_DIGITS)) for c in header])
    return header, table


def render_tsv(header: list[str], rows: list[list[str]]) -> str:
    """Header and rows as tab-separated lines."""
    return "\n".join("\t".join(line) for line in [header, *rows]) + "\n"


def _cell(tag: str, col: str, text: str) -> str:
    cls = ' class="time"' if col.startswith("time_") else ""
    return f"<{tag}{cls}>{html.escape(text)}</{tag}>"


STYLE = (
    "<style>body{font-family:sans-serif;font-size:13px}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right;white-space:nowrap}"
    "th{background:#f3f3f3}td:nth-child(-n+4){text-align:left}"
    "tr.failed td{background:#fde2e1}tr.missing td{background:#fff4d6}</style>"
)


def render_html(header: list[str], rows: list[list[str]]) -> str:
    """A self-contained page (no scripts, no remote assets) for `snakemake --report`.

    Wall-time cells carry class="time" so comparisons can leave them out.
    """
    status = header.index("status")
    counts = {s: sum(r[status] == s for r in rows) for s in STATUSES}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    lines = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>histoflow cohort summary</title>',
        STYLE,
        "</head><body>",
        f"<h1>Cohort summary</h1><p>{len(rows)} slides: {html.escape(summary)}.</p>",
        "<table><thead><tr>" + "".join(_cell("th", c, c) for c in header) + "</tr></thead>",
        "<tbody>",
    ]
    for row in rows:
        tds = "".join(_cell("td", col, text) for col, text in zip(header, row))
        lines.append(f'<tr class="{html.escape(row[status])}">{tds}</tr>')
    lines += ["</tbody></table></body></html>"]
    return "\n".join(lines) + "\n"


def cells_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """results/cohort/cells.tsv: one line per slide and class of the slides with cells,
    count, density and medians (neighbour-class columns: the union, in order)."""
    keys = _union(
        [k for k in stats if k.startswith("median_neighbours_")]
        for row in rows
        for stats in row.get("cells", {}).values()
    )
    header = [*CELLS_TSV_COLUMNS, *(k for k in keys if k not in CELLS_TSV_COLUMNS)]
    lines = []
    for row in rows:
        for (task, name), stats in row.get("cells", {}).items():
            values = {"sample": row["sample"], "task": task, "class_name": name, **stats}
            lines.append([format_cell(values.get(c), CELL_DIGITS) for c in header])
    return header, lines


def write_summary(
    sheet: dict[str, dict],
    tsv_path: str | os.PathLike,
    html_path: str | os.PathLike | None = None,
    results_dir: str | os.PathLike = "results",
    logs_dir: str | os.PathLike = "logs",
    benchmarks_dir: str | os.PathLike = "benchmarks",
    cells_path: str | os.PathLike | None = None,
) -> tuple[list[str], list[list[str]]]:
    """Write the cohort table as TSV (and HTML when `html_path` is given, the per-class
    cells table when `cells_path` is); returns the cohort table."""
    slides = slide_rows(sheet, results_dir, logs_dir, benchmarks_dir)
    header, rows = cohort_table(sheet, rows=slides)
    if cells_path:
        with atomic_output(cells_path) as tmp:
            Path(tmp).write_text(render_tsv(*cells_table(slides)), encoding="utf-8")
    with atomic_output(tsv_path) as tmp:
        Path(tmp).write_text(render_tsv(header, rows), encoding="utf-8")
    if html_path:
        with atomic_output(html_path) as tmp:
            Path(tmp).write_text(render_html(header, rows), encoding="utf-8")
    return header, rows
