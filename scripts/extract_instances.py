"""extract_instances: objects from maps.zarr, tile by tile -> instances.parquet + overlay."""

import _common


def main():
    from pathlib import Path

    from histoflow.instances import Options, overlay, run
    from histoflow.instances.table import read_table
    from histoflow.slide import open_slide

    sm = snakemake  # noqa: F821 - injected by Snakemake
    cfg = dict(sm.params.options)
    table = Path(sm.output.table)
    # Written only when the model card has a semantic task (CONTRACTS.md).
    classmap = table.with_name("classmap.zarr")
    run(sm.input.maps, table, classmap, Options.from_config(cfg, workers=sm.threads))
    _, meta = read_table(table)
    mpp = float(meta["mpp"])
    # The path from params: a missing slide is reported by open_slide with the sample.
    with open_slide(sm.params.slide, sample=sm.wildcards.sample, mpp=meta["slide_mpp"]) as slide:
        img, _ = overlay.render(
            table,
            meta,
            lambda x, y, w, h: slide.read_region(x, y, w, h, mpp),
            size=int(cfg["overlay_size"]),
        )
    overlay.write(img, sm.output.overlay)


_common.run(snakemake, main)  # noqa: F821
