"""infer_tiles: per-tile vectors of a tile-level model for one image, in every configured format."""

import _common


def main():
    from histoflow.tiles.infer import TileOptions, run
    from histoflow.tiles.model import load_tile_card

    sm = snakemake  # noqa: F821 - injected by Snakemake
    opts = TileOptions.from_config(dict(sm.params.options))
    card = load_tile_card(opts.model)
    run(
        sample=sm.wildcards.sample,
        slide_path=sm.params.slide,
        sheet_mpp=sm.params.mpp,
        mask_png=sm.input.mask,
        thumbnail_png=sm.input.thumbnail,
        mask_json=sm.input.meta,
        card=card,
        opts=opts,
        outputs=dict(zip(opts.formats, sm.output.stores)),
        map_path=sm.output.map,
        summary_path=sm.output.summary,
        mask_options=dict(sm.params.mask_options),
        threads=sm.threads,
    )


_common.run(snakemake, main)  # noqa: F821
