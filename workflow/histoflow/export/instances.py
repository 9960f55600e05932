"""What every exporter of objects shares: object UUIDs, class colours, valid polygons.

The instance table itself is read through `histoflow.io.instance_table`; the helpers
here make the exporters agree on identifiers, colours and geometry.
"""

from __future__ import annotations

import uuid

import numpy as np

from histoflow.io.instance_table import InstanceTable

RGB = tuple[int, int, int]

# Fixed namespace: object UUIDs depend only on (sample, instance id), so reruns and
# every export format give the same UUID to the same object.
OBJECT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "histoflow:objects")

# Used for classes whose task lists no colour (tab10).
PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


def object_uuid(sample: str, instance_id: str) -> str:
    """The object's UUID: a function of the sample and the instance id only."""
    return str(uuid.uuid5(OBJECT_NAMESPACE, f"{sample}/{instance_id}"))


def parse_color(value, index: int = 0) -> RGB:
    """'#rrggbb', '#rgb' or [r, g, b] -> (r, g, b) ints; palette colour if missing."""
    if isinstance(value, str) and value.startswith("#"):
        hexa = value[1:]
        if len(hexa) == 3:
            hexa = "".join(c * 2 for c in hexa)
        if len(hexa) == 6:
            try:
                return tuple(int(hexa[i : i + 2], 16) for i in (0, 2, 4))
            except ValueError:
                pass
    elif isinstance(value, list | tuple) and len(value) >= 3:
        return tuple(max(0, min(255, int(v))) for v in value[:3])
    return PALETTE[index % len(PALETTE)]


def class_color(table: InstanceTable, task: str, class_name: str, class_id: int) -> RGB:
    """The colour the table declares for a class; a palette colour if it declares none."""
    for i, cls in enumerate(table.task_classes(task)):
        if cls["name"] == class_name:
            return parse_color(cls.get("color"), i)
    return parse_color(None, class_id)


def polygonal(geom):
    """A valid Polygon/MultiPolygon from any geometry, or None if no area is left.

    `make_valid` can turn a self-touching contour into a collection with lines and
    points; only the polygon parts describe an object's area.
    """
    import shapely
    from shapely.geometry import MultiPolygon, Polygon

    if geom is None or geom.is_empty:
        return None
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    parts = [
        p
        for p in shapely.get_parts(geom, return_index=False)
        if isinstance(p, Polygon | MultiPolygon) and not p.is_empty
    ]
    polys = [q for p in parts for q in (p.geoms if isinstance(p, MultiPolygon) else [p])]
    if not polys:
        return None
    return polys[0] if len(polys) == 1 else MultiPolygon(polys)


def polygonal_array(geoms, grid_size: float | None = None):
    """`polygonal` over an array of geometries, vectorised for the common case.

    With `grid_size`, coordinates are also snapped to that grid, keeping validity
    (GEOS precision reducer); entries left without area become None.
    """
    import shapely

    geoms = np.array(geoms, dtype=object)
    present = ~shapely.is_missing(geoms)
    broken = present & ~shapely.is_valid(geoms)
    if broken.any():
        geoms[broken] = shapely.make_valid(geoms[broken])
    if grid_size and present.any():
        geoms[present] = shapely.set_precision(geoms[present], grid_size)
    types = shapely.get_type_id(geoms)
    simple = present & np.isin(types, (3, 6)) & ~shapely.is_empty(geoms)  # (Multi)Polygon
    out = np.full(len(geoms), None, dtype=object)
    out[simple] = geoms[simple]
    for i in np.flatnonzero(present & ~simple):
        out[i] = polygonal(geoms[i])
    return out
