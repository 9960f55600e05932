"""export_tsv: per-object TSV from instances.parquet."""

import _common


def main():
    from histoflow.export.tables import export_objects_tsv

    sm = snakemake  # noqa: F821 - injected by Snakemake
    export_objects_tsv(sm.input.instances, sm.output[0], sm.wildcards.sample)


_common.run(snakemake, main)  # noqa: F821
