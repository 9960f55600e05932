"""mask_tissue: thumbnail, tissue mask, QC overlay and mask.json for one slide."""

import _common


def main():
    from histoflow.io.mask_files import write_mask_files
    from histoflow.slide import open_slide
    from histoflow.tissue import MaskOptions, compute_tissue_mask

    sm = snakemake  # noqa: F821 - injected by Snakemake
    opts = MaskOptions.from_config(dict(sm.params.options))
    # Paths come from params: a missing file is not an input (see common.smk), and
    # open_slide / the mask reader report it with the sample name.
    user_mask = sm.params.user_mask or None
    with open_slide(sm.params.slide, sample=sm.wildcards.sample, mpp=sm.params.mpp) as slide:
        result = compute_tissue_mask(slide, opts, user_mask=user_mask)
    write_mask_files(result, sm.output.mask, sm.output.thumbnail, sm.output.overlay, sm.output.meta)


_common.run(snakemake, main)  # noqa: F821
