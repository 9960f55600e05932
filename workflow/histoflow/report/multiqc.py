"""MultiQC custom-content files (`*_mqc.yaml`), so `multiqc results/` gives the
report Snakemake and nf-core users know (https://docs.seqera.io/multiqc/custom_content).

Each file is one section: `id`, `section_name`, `description`, `plot_type`,
`pconfig` (or `headers` for tables) and `data` keyed by sample. No wall times, so the
files are the same bytes on every rerun.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from histoflow.io.atomic import atomic_output
from histoflow.paths import CohortPaths
from histoflow.report.plots import class_label
from histoflow.report.qc import FLAGS
from histoflow.report.records import class_union
from histoflow.report.sizes import bin_centres

# General Statistics columns: record key -> (title, description, decimal places).
GENERAL_STATS = {
    "tissue_fraction": ("Tissue fraction", "Fraction of the slide the tissue mask covers", 4),
    "tissue_area_mm2": ("Tissue mm²", "Tissue area (mm²)", 3),
    "patches": ("Patches", "Patches inference ran on", 0),
    "objects": ("Objects", "Objects (nuclei) found", 0),
    "objects_per_mm2": ("Objects/mm²", "Objects per mm² of tissue", 2),
    "area_median_um2": ("Median area µm²", "Median object area (µm²)", 1),
}


def _number(value, digits: int):
    return round(float(value), digits) if digits else int(value)


def general_stats(records: list[dict]) -> dict:
    """The General Statistics columns of every slide that has them."""
    data = {}
    for r in records:
        row = {
            k: _number(r[k], d) for k, (_, _, d) in GENERAL_STATS.items() if r.get(k) is not None
        }
        if row:
            data[r["sample"]] = row
    headers = {
        k: {"title": title, "description": text, "namespace": "histoflow", "min": 0}
        for k, (title, text, _) in GENERAL_STATS.items()
    }
    headers["tissue_fraction"]["max"] = 1
    return {
        "id": "histoflow_general_stats",
        "plot_type": "generalstats",
        "headers": headers,
        "data": data,
    }


def _section(stem: str, name: str, description: str, plot_type: str, pconfig: dict, data):
    return {
        "id": f"histoflow_{stem}",
        "section_name": name,
        "description": description,
        "plot_type": plot_type,
        "pconfig": {"id": f"histoflow_{stem}_plot", "title": f"histoflow: {name}", **pconfig},
        "data": data,
    }


def objects_bargraph(records: list[dict]) -> dict:
    """Bar plot: objects per class of every slide with an instance table."""
    keys = class_union(records)
    data = {
        r["sample"]: {class_label(k, keys): int(r["classes"].get(k, 0)) for k in keys}
        for r in records
        if "classes" in r
    }
    return _section(
        "objects",
        "Objects per class",
        "Objects found per class on each slide.",
        "bargraph",
        {"ylab": "objects", "cpswitch_c_active": False},
        data,
    )


def density_box(records: list[dict]) -> dict:
    """Box plot: objects per mm² of tissue, one box per class over the finished slides."""
    keys = class_union(records)
    data = {}
    for key in keys:
        values = [
            round(r["classes"][key] / r["tissue_area_mm2"], 3)
            for r in records
            if r["status"] == "ok" and key in r.get("classes", {}) and r.get("tissue_area_mm2")
        ]
        if values:
            data[class_label(key, keys)] = values
    return _section(
        "density",
        "Density per class",
        "Objects per mm² of tissue across the slides (one box per class, one value per slide).",
        "box",
        {"xlab": "objects per mm²"},
        data,
    )


def area_linegraph(records: list[dict]) -> dict:
    """Line plot: distribution of object areas (µm², all classes) of each slide."""
    centres = [round(float(c), 3) for c in bin_centres()]
    data = {}
    for r in records:
        if not r.get("sizes"):
            continue
        counts = [sum(s["hist"][i] for s in r["sizes"].values()) for i in range(len(centres))]
        total = sum(counts)
        data[r["sample"]] = {c: round(n / total, 5) for c, n in zip(centres, counts) if n}
    pconfig = {"xlab": "object area (µm²)", "ylab": "fraction of objects", "xlog": True}
    return _section(
        "nucleus_area",
        "Nucleus size",
        "Fraction of each slide's objects per area bin.",
        "linegraph",
        pconfig,
        data,
    )


def qc_table(records: list[dict]) -> dict:
    """Table: status, QC flags and error of every slide."""
    data = {
        r["sample"]: {
            "status": r["status"],
            "qc_flags": ", ".join(FLAGS[f["id"]][0] for f in r["flags"]) or "-",
            "error": r.get("error") or "-",
        }
        for r in records
    }
    section = _section(
        "qc",
        "Slide QC",
        "Status and QC flags of each slide (see results/cohort/report.html).",
        "table",
        {},
        data,
    )
    section["headers"] = {
        "status": {"title": "Status"},
        "qc_flags": {"title": "QC flags"},
        "error": {"title": "Error"},
    }
    return section


SECTIONS = {
    "general_stats": general_stats,
    "objects": objects_bargraph,
    "density": density_box,
    "nucleus_area": area_linegraph,
    "qc": qc_table,
}


def write_multiqc(records: list[dict], cohort: CohortPaths) -> list[Path]:
    """Write every section's file (`CohortPaths.multiqc`); returns the paths."""
    written = []
    for stem, build in SECTIONS.items():
        path = cohort.multiqc(stem)
        text = yaml.safe_dump(build(records), sort_keys=False, allow_unicode=True, width=100)
        with atomic_output(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
        written.append(path)
    return written
