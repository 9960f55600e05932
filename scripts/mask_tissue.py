"""mask_tissue: thumbnail, tissue mask, QC overlay and mask.json for one slide."""

import _common


def main():
    from histoflow.tissue import MaskOptions, run

    sm = snakemake  # noqa: F821 - injected by Snakemake
    # Paths come from params: a missing file is not an input (see common.smk), and
    # open_slide / the mask reader report it with the sample name.
    run(
        sm.params.slide,
        (sm.output.mask, sm.output.thumbnail, sm.output.overlay, sm.output.meta),
        MaskOptions.from_config(dict(sm.params.options)),
        sample=sm.wildcards.sample,
        mpp=sm.params.mpp,
        user_mask=sm.params.user_mask,
    )


_common.run(snakemake, main)  # noqa: F821
