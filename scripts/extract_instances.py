"""extract_instances: objects from maps.zarr, tile by tile -> instances.parquet + overlay."""

import _common


def main():
    from histoflow.instances import InstancesOptions, overlay, run
    from histoflow.io.instance_table import open_instance_table
    from histoflow.slide import open_slide

    sm = snakemake  # noqa: F821 - injected by Snakemake
    options = InstancesOptions.from_config({**sm.params.options, "workers": sm.threads})
    # Declared only when the model card has a semantic task (CONTRACTS.md).
    classmap = getattr(sm.output, "classmap", None)
    run(sm.input.maps, sm.output.table, classmap, options)
    table = open_instance_table(sm.output.table)
    mpp = float(table.meta["mpp"])
    # The path from params: a missing slide is reported by open_slide with the sample.
    slide_mpp = table.meta["slide_mpp"]
    with open_slide(sm.params.slide, sample=sm.wildcards.sample, mpp=slide_mpp) as slide:
        img, _ = overlay.render(
            table,
            lambda x, y, w, h: slide.read_region(x, y, w, h, mpp),
            size=options.overlay_size,
        )
    overlay.write(img, sm.output.overlay)


_common.run(snakemake, main)  # noqa: F821
