"""export_ometiff: pyramidal OME-TIFF heatmap of the probability heads."""

import _common


def main():
    from histoflow.export.ometiff import export_ometiff

    sm = snakemake  # noqa: F821 - injected by Snakemake
    opts = dict(sm.params.options)
    export_ometiff(
        sm.input.maps,
        sm.output[0],
        sm.wildcards.sample,
        heads=list(opts["heads"]) or None,
        tile=int(opts["tile"]),
        dtype=opts["dtype"],
        compression=opts["compression"],
        threads=sm.threads,
        tmpdir=sm.resources.get("tmpdir"),
    )


_common.run(snakemake, main)  # noqa: F821
