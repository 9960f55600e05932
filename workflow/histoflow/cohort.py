"""Cohort table: one row per slide, built from whatever per-slide files exist.

Columns: sample, status, error, slide geometry and tissue area (mask.json), number of
patches (raw.zarr `boxes`), objects and objects per mm² of tissue, in total and per
class (instances.parquet), and wall seconds per rule (benchmark files, columns
`time_<rule>_s`). Only the `time_*_s` columns differ between reruns.

Status of a slide:
- ok: its manifest exists, so every enabled stage finished for it;
- failed: a log of the slide reports an error, or its slide file is missing;
- missing: neither (not run yet, or stopped before its jobs started).
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

from histoflow.io.atomic import atomic_output
from histoflow.manifest import rule_timings

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
# Pipeline order for the wall-time columns; other rules follow alphabetically.
RULE_ORDER = ("mask_tissue", "infer_patches", "merge_patches", "extract_instances")
LAST_RULES = ("write_manifest",)
# Decimal places per column (fixed formatting keeps reruns byte-identical).
DIGITS = {"slide_mpp": 4, "tissue_fraction": 4, "tissue_area_mm2": 4, "objects_per_mm2": 2}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def count_patches(sample_dir: Path) -> int | None:
    """Rows of raw.zarr/boxes, from its metadata (no Zarr import, no chunk reads)."""
    for meta in ("infer/raw.zarr/boxes/zarr.json", "infer/raw.zarr/boxes/.zarray"):
        data = _read_json(sample_dir / meta)
        if data and data.get("shape"):
            return int(data["shape"][0])
    return None


def count_objects(sample_dir: Path) -> dict[tuple[str, str], int] | None:
    """(task, class name) -> number of objects, in the card's class order; None if absent."""
    path = sample_dir / "instances" / "instances.parquet"
    if not path.is_file():
        return None
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    counts: dict[tuple[str, str], int] = {}
    meta = (pf.schema_arrow.metadata or {}).get(b"histoflow")
    if meta:
        tasks = json.loads(meta).get("tasks") or {}
        for task, info in tasks.items():
            classes = info.get("classes", info) if isinstance(info, dict) else info
            for cls in classes or []:
                name = cls.get("name") if isinstance(cls, dict) else str(cls)
                counts[(task, name)] = 0
    table = pf.read(columns=["task", "class_name"])
    found: dict[tuple[str, str], int] = {}
    for task, name in zip(table["task"].to_pylist(), table["class_name"].to_pylist()):
        found[(task, name)] = found.get((task, name), 0) + 1
    for key in sorted(found):
        counts[key] = found[key]
    return counts


def log_error(logs_dir: Path, sample: str) -> str | None:
    """The last error line in the slide's rule logs (logs/<rule>/<sample>.log), if any."""
    message = None
    for log in sorted(logs_dir.glob(f"*/{sample}.log")):
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for i, line in enumerate(lines):
            if " ERROR " in line:
                # "<time> ERROR histoflow.<rule>: message"
                message = f"{log.parent.name}: {line.split(': ', 1)[-1].strip()}"
            elif line.startswith("Traceback (most recent call last)"):
                tail = next((t for t in reversed(lines[i:]) if t.strip()), line)
                message = f"{log.parent.name}: {tail.strip()}"
    return message


def slide_row(
    sample: str,
    sheet_row: dict,
    results_dir: str | os.PathLike = "results",
    logs_dir: str | os.PathLike = "logs",
    benchmarks_dir: str | os.PathLike = "benchmarks",
) -> dict:
    """Unformatted values of one slide's row; absent files leave their columns empty."""
    sample_dir = Path(results_dir) / sample
    row: dict = {"sample": sample, "slide": sheet_row.get("path")}
    if (sample_dir / "manifest.json").is_file():
        row["status"] = "ok"
    else:
        error = log_error(Path(logs_dir), sample)
        path = sheet_row.get("path")
        if error is None and path and not Path(path).exists():
            error = f"slide file not found: {path}"
        row["status"] = "failed" if error else "missing"
        row["error"] = error
    mask = _read_json(sample_dir / "mask" / "mask.json")
    if mask:
        width, height = mask.get("slide_dimensions") or (None, None)
        row |= {
            "slide_width": width,
            "slide_height": height,
            "slide_mpp": mask.get("mpp"),
            "mpp_source": mask.get("mpp_source"),
            "tissue_fraction": mask.get("tissue_fraction"),
            "tissue_area_mm2": mask.get("tissue_area_mm2"),
        }
    row["patches"] = count_patches(sample_dir)
    objects = count_objects(sample_dir)
    area = row.get("tissue_area_mm2")
    if objects is not None:
        total = sum(objects.values())
        row["objects"] = total
        row["objects_per_mm2"] = total / area if area else None
        row["classes"] = objects
    row["times"] = {rule: t["s"] for rule, t in rule_timings(benchmarks_dir, sample).items()}
    return row


def _rule_key(rule: str) -> tuple:
    if rule in RULE_ORDER:
        return (0, RULE_ORDER.index(rule), rule)
    if rule in LAST_RULES:
        return (2, LAST_RULES.index(rule), rule)
    return (1, 0, rule)


def _fmt(value, digits: int | None = None) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.{2 if digits is None else digits}f}"
    return str(value).replace("\t", " ").replace("\n", " ")


def cohort_table(
    sheet: dict[str, dict],
    results_dir: str | os.PathLike = "results",
    logs_dir: str | os.PathLike = "logs",
    benchmarks_dir: str | os.PathLike = "benchmarks",
) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows, in sheet order; class and time columns are the union."""
    rows = [slide_row(s, r, results_dir, logs_dir, benchmarks_dir) for s, r in sheet.items()]
    classes: list[tuple[str, str]] = []
    for row in rows:
        classes += [key for key in row.get("classes", {}) if key not in classes]
    rules = sorted({rule for row in rows for rule in row["times"]}, key=_rule_key)
    header = list(BASE_COLUMNS)
    for task, name in classes:
        header += [f"objects_{task}_{name}", f"density_{task}_{name}_per_mm2"]
    header += [f"time_{rule}_s" for rule in rules] + ["time_total_s"]
    table = []
    for row in rows:
        values = [_fmt(row.get(col), DIGITS.get(col)) for col in BASE_COLUMNS]
        area = row.get("tissue_area_mm2")
        for key in classes:
            n = row["classes"].get(key, 0) if "classes" in row else None
            values += [_fmt(n), _fmt(n / area if n is not None and area else None)]
        times = [row["times"].get(rule) for rule in rules]
        total = sum(t for t in times if t is not None) if row["times"] else None
        values += [_fmt(t) for t in times] + [_fmt(total)]
        table.append(values)
    return header, table


def render_tsv(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join("\t".join(line) for line in [header, *rows]) + "\n"


def render_html(header: list[str], rows: list[list[str]]) -> str:
    """A self-contained page (no scripts, no remote assets) for `snakemake --report`.

    Wall-time cells carry class="time" so comparisons can leave them out.
    """
    status = header.index("status")
    counts = {s: sum(r[status] == s for r in rows) for s in ("ok", "failed", "missing")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)

    def cell(tag: str, col: str, text: str) -> str:
        cls = ' class="time"' if col.startswith("time_") else ""
        return f"<{tag}{cls}>{html.escape(text)}</{tag}>"

    lines = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>histoflow cohort summary</title>',
        "<style>body{font-family:sans-serif;font-size:13px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right;white-space:nowrap}"
        "th{background:#f3f3f3}td:nth-child(-n+4){text-align:left}"
        "tr.failed td{background:#fde2e1}tr.missing td{background:#fff4d6}</style>",
        "</head><body>",
        f"<h1>Cohort summary</h1><p>{len(rows)} slides: {html.escape(summary)}.</p>",
        "<table><thead><tr>" + "".join(cell("th", c, c) for c in header) + "</tr></thead>",
        "<tbody>",
    ]
    for row in rows:
        tds = "".join(cell("td", col, text) for col, text in zip(header, row))
        lines.append(f'<tr class="{html.escape(row[status])}">{tds}</tr>')
    lines += ["</tbody></table></body></html>"]
    return "\n".join(lines) + "\n"


def write_summary(
    sheet: dict[str, dict],
    tsv_path: str | os.PathLike,
    html_path: str | os.PathLike | None = None,
    results_dir: str | os.PathLike = "results",
    logs_dir: str | os.PathLike = "logs",
    benchmarks_dir: str | os.PathLike = "benchmarks",
) -> tuple[list[str], list[list[str]]]:
    header, rows = cohort_table(sheet, results_dir, logs_dir, benchmarks_dir)
    with atomic_output(tsv_path) as tmp:
        Path(tmp).write_text(render_tsv(header, rows), encoding="utf-8")
    if html_path:
        with atomic_output(html_path) as tmp:
            Path(tmp).write_text(render_html(header, rows), encoding="utf-8")
    return header, rows
