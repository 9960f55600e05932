"""export_zarr: slide-scale maps as a tiled, consolidated Zarr store."""

import _common


def main():
    from histoflow.export.dense import export_zarr

    sm = snakemake  # noqa: F821 - injected by Snakemake
    export_zarr(sm.input.maps, sm.output[0])


_common.run(snakemake, main)  # noqa: F821
