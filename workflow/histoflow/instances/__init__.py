"""extract_instances: slide-scale maps -> objects (nuclei, glands, regions), tile by tile.

Modules, one concern each: `options` (the config section), `tasks` (model card ->
post-processing tasks), `postprocess` (window -> labels / class map; the published
HoVer-Net algorithm in `hovernet_published`, its whole-map extremes in `normalise`), `objects`
(measurements, outlines), `regions` (semantic region pieces), `tiling` (grid and
ownership rule), `schedule` (tile plan, strips, workers), `work` (one tile),
`dedup` (cross-tile checks with STRtrees), `assemble` (tile results -> objects per
task, class map), `stage` (`extract` and `run`), `overlay` (picture), `resources`
(the rule's memory). The table itself is `histoflow.io.instance_table`.

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

__all__ = ["InstancesOptions", "Stats", "extract", "run"]

_HOMES = {
    "InstancesOptions": "histoflow.instances.options",
    "Stats": "histoflow.instances.stage",
    "extract": "histoflow.instances.stage",
    "run": "histoflow.instances.stage",
}


def __getattr__(name):
    # Lazy, so that the light `resources` module can be imported when Snakemake parses
    # the workflow without loading scikit-image, shapely and zarr.
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(name)
