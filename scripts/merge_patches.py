"""merge_patches: raw.zarr -> maps.zarr (one float32 map per head + uint16 coverage)."""

import _common


def main():
    from histoflow.merge import MergeOptions, run

    sm = snakemake  # noqa: F821 - injected by Snakemake
    run(
        sm.input.raw,
        sm.output.maps,
        MergeOptions.from_config(dict(sm.params.options)),
        threads=sm.threads,
        tmpdir=sm.resources.get("tmpdir"),
        progress=True,
    )


_common.run(snakemake, main)  # noqa: F821
