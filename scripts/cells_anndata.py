"""cells_anndata: the AnnData file of one slide's cells (cells/cells.h5ad)."""

import _common


def main():
    from histoflow.cells.anndata_io import export_anndata

    sm = snakemake  # noqa: F821 - injected by Snakemake
    export_anndata(sm.input.cells, sm.input.graph, sm.output[0], sm.input.mask)


_common.run(snakemake, main)  # noqa: F821
