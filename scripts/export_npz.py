"""export_npz: slide-scale maps as NPZ (small slides only: export.npz_max_mb)."""

import _common


def main():
    from histoflow.export.dense import export_npz

    sm = snakemake  # noqa: F821 - injected by Snakemake
    export_npz(sm.input.maps, sm.output[0], max_mb=sm.params.max_mb)


_common.run(snakemake, main)  # noqa: F821
