"""render_heatmap: a report picture of the first probability map over the slide."""

import _common


def main():
    from histoflow.merge.heatmap import render_heatmap

    sm = snakemake  # noqa: F821 - injected by Snakemake
    render_heatmap(sm.input.maps, sm.params.slide, sm.output[0], mpp_override=sm.params.mpp)


_common.run(snakemake, main)  # noqa: F821
