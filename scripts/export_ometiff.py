"""export_ometiff: pyramidal OME-TIFF heatmap of the probability heads."""

import _common


def main():
    from histoflow.export.ometiff import HeatmapOptions, export_ometiff

    sm = snakemake  # noqa: F821 - injected by Snakemake
    export_ometiff(
        sm.input.maps,
        sm.output[0],
        sm.wildcards.sample,
        HeatmapOptions.from_config(dict(sm.params.options)),
        threads=sm.threads,
        tmpdir=sm.resources.get("tmpdir"),
    )


_common.run(snakemake, main)  # noqa: F821
