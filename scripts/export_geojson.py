"""export_geojson: QuPath GeoJSON (FeatureCollection of detections) from instances.parquet."""

import _common


def main():
    from histoflow.export.geojson import export_geojson

    sm = snakemake  # noqa: F821 - injected by Snakemake
    gzip = bool(getattr(sm.params, "gzip", False))
    export_geojson(sm.input.instances, sm.output[0], sm.wildcards.sample, compress=gzip)


_common.run(snakemake, main)  # noqa: F821
