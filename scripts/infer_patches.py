"""infer_patches: run the model card's model over the tissue patches of one slide."""

import _common


def main():
    from histoflow.inference.threads import prefer_huge_pages, use_threads

    prefer_huge_pages()  # before torch's first import
    from histoflow.inference.runner import InferenceOptions, run
    from histoflow.io.mask_files import read_mask, read_thumbnail
    from histoflow.models.card import load_dense_card
    from histoflow.models.loader import load_model

    sm = snakemake  # noqa: F821 - injected by Snakemake
    threads = use_threads(sm.threads)
    card = load_dense_card(sm.params.card, sm.params.weights)
    model = load_model(card)
    mask, mask_meta = read_mask(sm.input.mask, sm.input.mask_meta)
    options = InferenceOptions.from_config(dict(sm.params.options))
    thumbnail = read_thumbnail(sm.input.thumbnail) if options.stain_normalisation else None
    run(
        sm.params.slide,
        card,
        model,
        sm.output.raw,
        options,
        sample=sm.wildcards.sample,
        mpp_override=sm.params.mpp,
        mask=mask,
        mask_meta=mask_meta,
        threads=threads,
        thumbnail=thumbnail,
    )


_common.run(snakemake, main)  # noqa: F821
