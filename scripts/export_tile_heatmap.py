"""export_tile_{ometiff,png}: heatmap of a tile classifier's scores from the tile-grid map."""

import _common


def main():
    from histoflow.export.tile_heatmap import export_tile_ometiff, export_tile_png

    sm = snakemake  # noqa: F821 - injected by Snakemake
    if sm.params.kind == "ometiff":
        export_tile_ometiff(
            sm.input.map, sm.output[0], sm.wildcards.sample, tmpdir=sm.resources.tmpdir
        )
    else:
        export_tile_png(sm.input.map, sm.output[0], thumbnail_png=sm.input.thumbnail)


_common.run(snakemake, main)  # noqa: F821
