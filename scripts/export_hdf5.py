"""export_hdf5: slide-scale maps as HDF5 (one tiled dataset per map)."""

import _common


def main():
    from histoflow.export.dense import export_hdf5

    sm = snakemake  # noqa: F821 - injected by Snakemake
    export_hdf5(sm.input.maps, sm.output[0])


_common.run(snakemake, main)  # noqa: F821
