"""export_summary: per-slide summary TSV (tissue, patches, objects per class, stage wall times)."""

import _common


def main():
    from pathlib import Path

    from histoflow.export.summary import summarize, write_summary

    sm = snakemake  # noqa: F821 - injected by Snakemake
    # benchmarks/<rule>/<sample>.tsv: the rule is the parent directory name.
    benchmarks = {Path(p).parent.name: p for p in sm.input.benchmarks}
    row = summarize(
        sm.wildcards.sample,
        sm.input.mask,
        sm.input.instances,
        maps=sm.input.maps,
        benchmarks=benchmarks,
        timings=sm.params.timings,
    )
    write_summary(row, sm.output[0])


_common.run(snakemake, main)  # noqa: F821
