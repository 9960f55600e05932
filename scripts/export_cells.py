"""export_cells: QuPath cell objects (nucleus + cell boundary, measurements) of one slide."""

import _common


def main():
    from histoflow.cells.qupath import export_cells

    sm = snakemake  # noqa: F821 - injected by Snakemake
    export_cells(
        sm.input.cells,
        sm.input.instances,
        sm.output[0],
        sm.wildcards.sample,
        expansion_um=float(sm.params.expansion_um),
        compress=bool(sm.params.gzip),
    )


_common.run(snakemake, main)  # noqa: F821
