"""export_geojson: QuPath GeoJSON (FeatureCollection of detections) from instances.parquet."""

import _common


def main():
    from histoflow.export.geojson import export_geojson

    sm = snakemake  # noqa: F821 - injected by Snakemake
    export_geojson(sm.input.instances, sm.output[0], sm.wildcards.sample)


_common.run(snakemake, main)  # noqa: F821
