"""cohort_report: the cohort page results/cohort/report.html and the MultiQC files."""

from pathlib import Path

import _common


def main():
    from histoflow.report.build import write_report
    from histoflow.report.settings import ReportSettings

    sm = snakemake  # noqa: F821 - injected by Snakemake
    records = write_report(
        dict(sm.params.sheet),
        # results/cohort/report.html -> results/
        results_dir=Path(sm.output.html).parent.parent,
        logs_dir=sm.params.logs,
        benchmarks_dir=sm.params.benchmarks,
        settings=ReportSettings.from_config(dict(sm.params.settings)),
    )
    flagged = sum(bool(r["flags"]) for r in records)
    _common.logging.getLogger("histoflow.cohort_report").info(
        "%d slides, %d with a QC flag", len(records), flagged
    )


_common.run(snakemake, main)  # noqa: F821
