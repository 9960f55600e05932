"""measure_cells: per-nucleus measurements and the neighbourhood graph of one slide
(instances.parquet + slide -> cells/cells.parquet, cells/graph.parquet)."""

import _common


def main():
    from histoflow.cells.stage import CellsOptions, run

    sm = snakemake  # noqa: F821 - injected by Snakemake
    options = CellsOptions.from_config({**sm.params.options, "workers": sm.threads})
    # The path from params: a missing slide is reported by open_slide with the sample.
    run(
        sm.input.table,
        sm.params.slide,
        sm.output.cells,
        sm.output.graph,
        options,
        sample=sm.wildcards.sample,
    )


_common.run(snakemake, main)  # noqa: F821
