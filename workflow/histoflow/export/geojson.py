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
from pathlib import Path

import numpy as np
import shapely

from histoflow.export.instances import object_uuid, open_instances, polygonal_array
from histoflow.io.atomic import atomic_output

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


def export_geojson(
    instances_path: str | Path, out_path: str | Path, sample: str, decimals: int = DECIMALS
) -> int:
    """Write the GeoJSON; returns the number of features (dropped objects are logged)."""
    table = open_instances(instances_path)
    mpp = table.slide_mpp
    written = dropped = 0
    with atomic_output(out_path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        fh.write('{"type":"FeatureCollection","features":[')
        for batch in table.batches():
            # valid, snapped to the output grid (so rounding cannot break validity)
            geoms = polygonal_array(shapely.from_wkb(batch["contour"]), 10.0**-decimals)
            for i, geom in enumerate(geoms):
                if geom is None:
                    dropped += 1
                    log.warning("object %s has no polygon area; left out", batch["id"][i])
                    continue
                task, name = batch["task"][i], batch["class_name"][i]
                class_id = int(batch["class_id"][i])
                measurements = {
                    "Area µm^2": _number(batch["area_px"][i] * mpp * mpp, 3),
                    "Perimeter µm": _number(geom.length * mpp, 3),
                    "Probability": _number(batch["probability"][i], 4),
                    "Centroid X µm": _number(batch["centroid_x"][i] * mpp, 3),
                    "Centroid Y µm": _number(batch["centroid_y"][i] * mpp, 3),
                }
                feature = {
                    "type": "Feature",
                    "id": object_uuid(sample, batch["id"][i]),
                    "geometry": geometry_json(geom, decimals),
                    "properties": {
                        "objectType": "detection",
                        "classification": {
                            "name": name,
                            "color": list(table.color(task, name, class_id)),
                        },
                        "measurements": measurements,
                        "metadata": {"histoflow_id": batch["id"][i], "task": task},
                    },
                }
                fh.write("\n" if written == 0 else ",\n")
                fh.write(json.dumps(feature, ensure_ascii=False, separators=(",", ":")))
                written += 1
        fh.write("\n]}\n")
    log.info("%s: %d features written, %d objects without area left out", sample, written, dropped)
    return written
