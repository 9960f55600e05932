"""The cohort report page: one self-contained HTML file (no network, no other file).

Static HTML carries what must be seen without scripts: the counts, the failed slides
with their error, the QC flags explained, the plots. The gallery and the table are
drawn by assets/report.js from JSON blocks: `report-data` (one entry per slide, in
the order failed first), `report-images` (every picture once, as a data URI) and
`report-times` (wall seconds per rule, class="time": the only part that differs
between reruns, left out when reruns are compared).
"""

from __future__ import annotations

import html
import json
from importlib import resources

from histoflow.cohort import STATUSES, TOTAL_TIME, rule_key
from histoflow.export.summary import time_column
from histoflow.report.pictures import PICTURES
from histoflow.report.plots import class_label, density_plot, size_plot
from histoflow.report.qc import FLAGS, explain
from histoflow.report.records import class_union
from histoflow.report.settings import ReportSettings

TEXT = None  # `digits` of a text column
# (key, label, group, digits) of the columns every cohort has.
BASE_COLUMNS = (
    ("sample", "sample", "Slide", TEXT),
    ("status", "status", "Slide", TEXT),
    ("flags", "QC flags", "Slide", TEXT),
    ("slide_width", "width px", "Slide", 0),
    ("slide_height", "height px", "Slide", 0),
    ("slide_mpp", "µm/px", "Slide", 4),
    ("mpp_source", "mpp from", "Slide", TEXT),
    ("tissue_fraction", "fraction", "Tissue", 4),
    ("tissue_area_mm2", "area mm²", "Tissue", 4),
    ("patches", "patches", "Inference", 0),
    ("objects", "objects", "Inference", 0),
    ("objects_per_mm2", "objects/mm²", "Inference", 2),
    ("area_median_um2", "median area µm²", "Inference", 1),
)
CLASS_GROUP = "Objects per class"
TIME_GROUP = "Time per rule (s)"


def _column(key: str, label: str, group: str, digits: int | None) -> dict:
    return {"key": key, "label": label, "group": group, "digits": digits}


def table_columns(keys: list[tuple[str, str]]) -> list[dict]:
    """Columns of the table but the times: slide, tissue, inference, objects per class
    (`n<i>` count and `d<i>` density of class i of `keys`)."""
    columns = [_column(*c) for c in BASE_COLUMNS]
    for i, key in enumerate(keys):
        label = class_label(key, keys)
        columns.append(_column(f"n{i}", label, CLASS_GROUP, 0))
        columns.append(_column(f"d{i}", f"{label}/mm²", CLASS_GROUP, 2))
    return columns


def _rounded(value, digits: int | None):
    if isinstance(value, float):
        return round(value, digits) if digits is not None else value
    return value


def _cells(record: dict, columns: list[dict], keys: list[tuple[str, str]]) -> list:
    values = dict(record)
    values["flags"] = " ".join(FLAGS[f["id"]][0] for f in record["flags"])
    area = record.get("tissue_area_mm2")
    for i, key in enumerate(keys):
        n = record.get("classes", {}).get(key)
        values[f"n{i}"] = n
        values[f"d{i}"] = n / area if n is not None and area else None
    return [_rounded(values.get(c["key"]), c["digits"]) for c in columns]


def _slide_entry(record: dict, cells: list, pictures: dict[str, int]) -> dict:
    return {
        "sample": record["sample"],
        "status": record["status"],
        "error": record.get("error"),
        "slide": record.get("slide"),
        "flags": record["flags"],
        "pics": pictures,
        "links": record["links"],
        "cells": cells,
    }


def page_data(records: list[dict], settings: ReportSettings) -> tuple[dict, list[str], dict]:
    """The three JSON blocks: data (columns, slides), images, times."""
    keys = class_union(records)
    columns = table_columns(keys)
    images: list[str] = []
    slides = []
    for record in records:
        pictures = {}
        for kind, uri in record["pictures"].items():
            pictures[kind] = len(images)
            images.append(uri)
        slides.append(_slide_entry(record, _cells(record, columns, keys), pictures))
    data = {
        "pageSize": settings.page_size,
        "columns": columns,
        "classes": [class_label(k, keys) for k in keys],
        "flagTitles": {flag: title for flag, (title, _) in FLAGS.items()},
        "slides": slides,
    }
    return data, images, time_block(records)


def time_block(records: list[dict]) -> dict:
    """Columns and cells (one list per record) of the wall seconds per rule."""
    rules = sorted({rule for r in records for rule in r["times"]}, key=rule_key)
    columns = [_column(time_column(rule), rule, TIME_GROUP, 2) for rule in rules]
    columns.append(_column(TOTAL_TIME, "total", TIME_GROUP, 2))
    cells = []
    for r in records:
        row = [r["times"].get(rule) for rule in rules]
        known = [t for t in row if t is not None]
        cells.append([_rounded(t, 2) for t in [*row, sum(known) if known else None]])
    return {"columns": columns, "cells": cells}


def _json_block(block_id: str, value, css_class: str = "") -> str:
    # "<" escaped, so no value can close the script element.
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")
    cls = f' class="{css_class}"' if css_class else ""
    return f'<script type="application/json" id="{block_id}"{cls}>{text}</script>'


def _asset(name: str) -> str:
    return resources.files("histoflow.report").joinpath("assets", name).read_text("utf-8")


def _failed_section(records: list[dict]) -> str:
    failed = [r for r in records if r["status"] == "failed"]
    if not failed:
        return ""
    rows = []
    for r in failed:
        logs = " ".join(
            f'<a href="{html.escape(href)}">{html.escape(label)}</a>'
            for label, href in r["links"]
            if label.startswith("log ")
        )
        rows.append(
            f"<tr><td>{html.escape(r['sample'])}</td><td>{html.escape(r.get('error') or '')}"
            f"</td><td>{logs}</td></tr>"
        )
    head = "<tr><th>sample</th><th>error</th><th>logs</th></tr>"
    return (
        f'<h2>Failed slides ({len(failed)})</h2><table id="failed">{head}'
        + "".join(rows)
        + "</table>"
    )


def _flags_section(records: list[dict], settings: ReportSettings) -> str:
    items = []
    for flag, (title, _) in FLAGS.items():
        n = sum(any(f["id"] == flag for f in r["flags"]) for r in records)
        items.append(
            f'<li><span class="flag">{html.escape(title)}</span> {n} slide(s): '
            f"{html.escape(explain(flag, settings))}</li>"
        )
    return '<h2>QC flags</h2><ul id="qc-flags">' + "".join(items) + "</ul>"


def _plots_section(records: list[dict]) -> str:
    keys = class_union(records)
    plots = [p for p in (density_plot(records, keys), size_plot(records, keys)) if p]
    if not plots:
        return "<h2>Per-class plots</h2><p class='muted'>No objects (instances stage not run).</p>"
    return '<h2>Per-class plots</h2><div id="plots">' + "".join(plots) + "</div>"


def _options(values: list[tuple[str, str]]) -> str:
    return "".join(f'<option value="{html.escape(v)}">{html.escape(t)}</option>' for v, t in values)


def _controls() -> str:
    statuses = [("", "all statuses"), *((s, s) for s in STATUSES)]
    flags = [("", "all slides"), ("any", "any QC flag"), *((f, t) for f, (t, _) in FLAGS.items())]
    pictures = [(kind, kind) for kind in PICTURES]
    return (
        '<div class="controls"><input id="filter" type="search" size="30" '
        'placeholder="filter: sample, error, flag..." aria-label="filter">'
        f'<select id="status" aria-label="status">{_options(statuses)}</select>'
        f'<select id="flag" aria-label="QC flag">{_options(flags)}</select>'
        f'<label>picture <select id="picture">{_options(pictures)}</select></label>'
        '<button id="prev" type="button">&lt; previous</button>'
        '<span id="pageinfo"></span><button id="next" type="button">next &gt;</button></div>'
    )


def _summary_line(records: list[dict]) -> str:
    counts = {s: sum(r["status"] == s for r in records) for s in STATUSES}
    text = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no slides"
    flagged = sum(bool(r["flags"]) for r in records)
    noun = "slide" if len(records) == 1 else "slides"
    return f"<p>{len(records)} {noun}: {html.escape(text)}; {flagged} with a QC flag.</p>"


def render_page(records: list[dict], settings: ReportSettings, links: list[tuple[str, str]]) -> str:
    """The whole page for `records` (from `records.cohort_records`); `links` are
    [label, href] of the cohort's other files (summary TSV, MultiQC files)."""
    data, images, times = page_data(records, settings)
    other = " · ".join(f'<a href="{html.escape(h)}">{html.escape(t)}</a>' for t, h in links)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>histoflow cohort report</title><style>{_asset('report.css')}</style></head>",
        "<body><h1>Cohort report</h1>",
        _summary_line(records),
        f'<p class="muted">{other}</p>',
        _failed_section(records),
        _flags_section(records, settings),
        _plots_section(records),
        "<h2>Slides</h2>",
        "<noscript><p>The gallery and the table need JavaScript; summary.tsv has the same "
        "table.</p></noscript>",
        _controls(),
        '<div id="gallery"></div><div class="tablewrap"><table id="table"></table></div>',
        _json_block("report-data", data),
        _json_block("report-images", images),
        _json_block("report-times", times, "time"),
        f"<script>{_asset('report.js')}</script>",
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"
