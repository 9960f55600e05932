"""extract_instances: slide-scale maps -> objects (nuclei, glands, regions), tile by tile.

Modules, one concern each: `tasks` (model card -> post-processing tasks),
`postprocess` (window -> labels / class map), `objects` (measurements, outlines),
`regions` (semantic region pieces), `tiling` (grid and ownership rule), `dedup`
(cross-tile checks with STRtrees), `table` (instances.parquet), `overlay` (picture),
`engine` (reading, workers, assembly).

De-dup rule (see `tiling`): every tile post-processes its core plus `margin` pixels
of context and reports an object only if the object's centroid lies in its core and
its box stays `halo` pixels (the post-processor's reach) inside the read window,
except at the slide edge. Centroid ownership makes each object appear once; the halo
keeps only objects whose result cannot depend on unseen pixels, so they match a
whole-map pass and are never cut. Objects at most `margin - halo + 1` model pixels
across are guaranteed; a larger object is reported only when it happens to fit its
owner's window, else dropped and counted as truncated (logged with advice to raise the
margin). An STRtree check on objects near seams drops the rare object that still
overlaps one from another tile. Semantic regions, which are usually larger than any
margin, are instead outlined per tile core and joined across seams.
"""

__all__ = ["Options", "Stats", "extract", "run"]


def __getattr__(name):
    # Lazy, so that the light `resources` module can be imported when Snakemake parses
    # the workflow without loading scikit-image, shapely and zarr.
    if name in __all__:
        from histoflow.instances import engine

        return getattr(engine, name)
    raise AttributeError(name)
