"""cohort_summary: one row per slide (results/cohort/summary.tsv and .html)."""

from pathlib import Path

import _common


def main():
    from histoflow.cohort import write_summary

    sm = snakemake  # noqa: F821 - injected by Snakemake
    header, rows = write_summary(
        dict(sm.params.sheet),
        sm.output.tsv,
        sm.output.html,
        # results/cohort/summary.tsv -> results/
        results_dir=Path(sm.output.tsv).parent.parent,
        logs_dir=sm.params.logs,
        benchmarks_dir=sm.params.benchmarks,
        cells_path=sm.output.cells,
    )
    _common.logging.getLogger("histoflow.cohort_summary").info(
        "%d slides, %d columns", len(rows), len(header)
    )


_common.run(snakemake, main)  # noqa: F821
