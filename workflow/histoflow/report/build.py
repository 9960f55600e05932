"""`write_report`: the cohort stage's report page and MultiQC files."""

from __future__ import annotations

import os
from pathlib import Path

from histoflow.io.atomic import atomic_output
from histoflow.paths import MULTIQC_SECTIONS, CohortPaths
from histoflow.report.multiqc import write_multiqc
from histoflow.report.page import render_page
from histoflow.report.records import ReportDirs, cohort_records
from histoflow.report.settings import ReportSettings


def write_report(
    sheet: dict[str, dict],
    results_dir: str | os.PathLike = "results",
    logs_dir: str | os.PathLike = "logs",
    benchmarks_dir: str | os.PathLike = "benchmarks",
    settings: ReportSettings | None = None,
) -> list[dict]:
    """Write results/cohort/report.html and the MultiQC files for the slides of `sheet`
    (sample -> sheet row); returns the slides' records, failed first."""
    settings = settings or ReportSettings()
    cohort = CohortPaths(str(results_dir))
    dirs = ReportDirs(Path(results_dir), Path(logs_dir), Path(benchmarks_dir), cohort.root)
    records = cohort_records(sheet, dirs, settings)
    write_multiqc(records, cohort)
    links = [("cohort table (TSV)", cohort.summary_tsv.name)]
    links += [
        (f"MultiQC {s}", cohort.multiqc(s).relative_to(cohort.root).as_posix())
        for s in MULTIQC_SECTIONS
    ]
    page = render_page(records, settings, links)
    with atomic_output(cohort.report_html) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return records
