"""export_sqlite: SQLite annotation store with an R-tree index from instances.parquet."""

import _common


def main():
    from histoflow.export.sqlite_store import export_sqlite

    sm = snakemake  # noqa: F821 - injected by Snakemake
    export_sqlite(sm.input.instances, sm.output[0], sm.wildcards.sample)


_common.run(snakemake, main)  # noqa: F821
