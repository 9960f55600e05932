"""Reading the instance table (`instances.parquet`) in bounded batches.

The table and its `histoflow` metadata are defined in workflow/CONTRACTS.md. Every
exporter of objects goes through here, so they agree on colours, units and order.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from histoflow.export import ExportError
from histoflow.instances.table import SCHEMA

# The columns of instances.parquet, as extract_instances writes them.
COLUMNS = tuple(SCHEMA.names)

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
    return str(uuid.uuid5(OBJECT_NAMESPACE, f"{sample}/{instance_id}"))


def parse_color(value, index: int = 0) -> tuple[int, int, int]:
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


@dataclass
class InstanceTable:
    """An opened instance table: metadata now, rows in batches on demand."""

    path: Path
    meta: dict
    num_rows: int

    @property
    def slide_mpp(self) -> float:
        return float(self.meta["slide_mpp"])

    def color(self, task: str, class_name: str, class_id: int) -> tuple[int, int, int]:
        classes = self.meta.get("tasks", {}).get(task, {})
        # `tasks` maps task -> classes, as a list of {name, color} or {"classes": [...]}.
        if isinstance(classes, dict):
            classes = classes.get("classes", [])
        for i, cls in enumerate(classes):
            if isinstance(cls, dict) and cls.get("name") == class_name:
                return parse_color(cls.get("color"), i)
        return parse_color(None, class_id)

    def batches(self, batch_size: int = 4096, columns=COLUMNS) -> Iterator[dict[str, list]]:
        """Row batches as dicts of column -> Python list, in file order."""
        pf = pq.ParquetFile(self.path)
        for batch in pf.iter_batches(batch_size=batch_size, columns=list(columns)):
            yield batch.to_pydict()

    def classes(self) -> list[tuple[str, str]]:
        """(task, class name) of every class the metadata declares, in declared order."""
        out = []
        for task, classes in self.meta.get("tasks", {}).items():
            if isinstance(classes, dict):
                classes = classes.get("classes", [])
            out += [(task, c["name"]) for c in classes if isinstance(c, dict) and "name" in c]
        return out


def open_instances(path: str | Path) -> InstanceTable:
    path = Path(path)
    try:
        pf = pq.ParquetFile(path)
    except (OSError, ValueError) as exc:
        raise ExportError(f"file '{path}': not a readable instance table ({exc})") from exc
    kv = pf.schema_arrow.metadata or {}
    raw = kv.get(b"histoflow")
    if raw is None:
        raise ExportError(f"file '{path}': parquet metadata has no 'histoflow' key")
    meta = json.loads(raw)
    if "slide_mpp" not in meta:
        raise ExportError(f"file '{path}': 'histoflow' metadata has no 'slide_mpp'")
    missing = [c for c in COLUMNS if c not in pf.schema_arrow.names]
    if missing:
        raise ExportError(f"file '{path}': missing column(s) {', '.join(missing)}")
    return InstanceTable(path=path, meta=meta, num_rows=pf.metadata.num_rows)


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
