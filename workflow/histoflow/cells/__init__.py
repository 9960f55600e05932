"""Analysis-ready cells: per-nucleus measurements, neighbourhoods and AnnData.

Modules, one concern each: `measure` (rasterise nuclei outlines, shape and stain
measurements, vectorised over many nuclei), `graph` (Delaunay graph and neighbour
counts by class), `stage` (measure_cells: the instance table and the slide streamed
in batches -> `cells.parquet` + `graph.parquet`, written through
`histoflow.io.cell_table`), `anndata_io` (one `.h5ad` per slide, and `concat` of many),
`qupath` (QuPath cell objects), `cohort` (per-class summaries of a cohort).
`python -m histoflow.cells concat` joins per-slide AnnData files.
"""

__all__ = ["CellsOptions", "Stats", "run"]

_HOMES = {
    "CellsOptions": "histoflow.cells.stage",
    "Stats": "histoflow.cells.stage",
    "run": "histoflow.cells.stage",
}


def __getattr__(name):
    # Lazy, so that importing the package (Snakemake parsing the rules) stays light.
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(name)
