"""QuPath-compatible GeoJSON of the instance table, streamed feature by feature.

A FeatureCollection in level-0 pixel coordinates, which is what QuPath's
File > Import objects reads. Each feature carries QuPath's property keys:
`objectType` ("detection"), `classification` {name, color as [r, g, b] ints} and
`measurements` {name: number}; `metadata` keeps the histoflow instance id and task.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import shapely

from histoflow.export.instances import class_color, object_uuid, polygonal_array
from histoflow.io.atomic import atomic_output
from histoflow.io.instance_table import InstanceTable, open_instance_table

log = logging.getLogger(__name__)

# 1/100 px is far below what a nucleus contour resolves; it keeps files small.
DECIMALS = 2


def _ring(ring, decimals: int) -> list[list[float]]:
    return np.round(np.asarray(ring.coords), decimals).tolist()


def geometry_json(geom, decimals: int = DECIMALS) -> dict:
    """GeoJSON geometry of a Polygon or MultiPolygon (exterior CCW, holes CW, RFC 7946)."""
    geom = shapely.orient_polygons(geom, exterior_cw=False)

    def rings(poly):
        return [_ring(poly.exterior, decimals)] + [_ring(r, decimals) for r in poly.interiors]

    if geom.geom_type == "Polygon":
        return {"type": "Polygon", "coordinates": rings(geom)}
    return {"type": "MultiPolygon", "coordinates": [rings(p) for p in geom.geoms]}


def _number(value: float, digits: int) -> float | None:
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


def _feature(table: InstanceTable, sample: str, row: dict, geom, decimals: int) -> dict:
    """One QuPath detection; `row` holds one value per column."""
    mpp = table.slide_mpp
    task, name = row["task"], row["class_name"]
    measurements = {
        "Area µm^2": _number(row["area_px"] * mpp * mpp, 3),
        "Perimeter µm": _number(geom.length * mpp, 3),
        "Probability": _number(row["probability"], 4),
        "Centroid X µm": _number(row["centroid_x"] * mpp, 3),
        "Centroid Y µm": _number(row["centroid_y"] * mpp, 3),
    }
    return {
        "type": "Feature",
        "id": object_uuid(sample, row["id"]),
        "geometry": geometry_json(geom, decimals),
        "properties": {
            "objectType": "detection",
            "classification": {
                "name": name,
                "color": list(class_color(table, task, name, int(row["class_id"]))),
            },
            "measurements": measurements,
            "metadata": {"histoflow_id": row["id"], "task": task},
        },
    }


def _features(table: InstanceTable, sample: str, decimals: int) -> Iterator[dict]:
    """Features in table order; objects without polygon area are logged and left out."""
    for batch in table.batches():
        # valid, snapped to the output grid (so rounding cannot break validity)
        geoms = polygonal_array(shapely.from_wkb(batch["contour"]), 10.0**-decimals)
        for i, geom in enumerate(geoms):
            if geom is None:
                log.warning("object %s has no polygon area; left out", batch["id"][i])
                continue
            yield _feature(table, sample, {k: v[i] for k, v in batch.items()}, geom, decimals)


def export_geojson(
    instances_path: str | Path, out_path: str | Path, sample: str, decimals: int = DECIMALS
) -> int:
    """Write the GeoJSON; returns the number of features (dropped objects are logged)."""
    table = open_instance_table(instances_path)
    written = 0
    with atomic_output(out_path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        fh.write('{"type":"FeatureCollection","features":[')
        for feature in _features(table, sample, decimals):
            fh.write("\n" if written == 0 else ",\n")
            fh.write(json.dumps(feature, ensure_ascii=False, separators=(",", ":")))
            written += 1
        fh.write("\n]}\n")
    dropped = table.num_rows - written
    log.info("%s: %d features written, %d objects without area left out", sample, written, dropped)
    return written
