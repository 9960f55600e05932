"""QuPath-compatible GeoJSON of the instance table, streamed feature by feature.

A FeatureCollection in level-0 pixel coordinates, which is what QuPath's
File > Import objects reads. Each feature carries QuPath's property keys:
`objectType` ("detection"), `classification` {name, color as [r, g, b] ints} and
`measurements` {name: number}; `metadata` keeps the histoflow instance id and task.
A non-finite measurement is the string "NaN", as QuPath's own writer stores it. No
measurement is named like one QuPath computes itself (`Centroid X µm`, `Centroid Y µm`:
QuPath 0.6 hides a stored one as a duplicate). With `gzip` the file is gzip-compressed
(`.geojson.gz`, which QuPath reads too); the compressed bytes are the same on reruns
(no name or time in the gzip header).
"""

from __future__ import annotations

import contextlib
import gzip
import io
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


# QuPath's GeoJSON writer stores non-finite measurements as this string.
NOT_A_NUMBER = "NaN"


def measurement(value: float, digits: int) -> float | str:
    """A measurement value: rounded, or "NaN" when not finite (as QuPath writes it)."""
    value = float(value)
    return round(value, digits) if math.isfinite(value) else NOT_A_NUMBER


@contextlib.contextmanager
def open_geojson(path: str | Path, compress: bool):
    """A text stream onto `path`, gzip-compressed when `compress` (reproducible bytes:
    no file name or time in the gzip header)."""
    if not compress:
        with open(path, "w", encoding="utf-8", newline="\n") as fh:
            yield fh
        return
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz,
        io.TextIOWrapper(gz, encoding="utf-8", newline="\n") as fh,
    ):
        yield fh


def write_features(path: str | Path, features, compress: bool = False) -> int:
    """Write a FeatureCollection of `features` (an iterable of dicts) atomically, one
    feature a line; returns how many were written."""
    written = 0
    with atomic_output(path) as tmp, open_geojson(tmp, compress) as fh:
        fh.write('{"type":"FeatureCollection","features":[')
        for feature in features:
            fh.write("\n" if written == 0 else ",\n")
            fh.write(json.dumps(feature, ensure_ascii=False, separators=(",", ":")))
            written += 1
        fh.write("\n]}\n")
    return written


def _feature(table: InstanceTable, sample: str, row: dict, geom, decimals: int) -> dict:
    """One QuPath detection; `row` holds one value per column."""
    mpp = table.slide_mpp
    measurements = {
        "Area µm^2": measurement(row["area_px"] * mpp * mpp, 3),
        "Perimeter µm": measurement(geom.length * mpp, 3),
        "Probability": measurement(row["probability"], 4),
    }
    return {
        "type": "Feature",
        "id": object_uuid(sample, row["id"]),
        "geometry": geometry_json(geom, decimals),
        "properties": qupath_properties("detection", table, row, measurements),
    }


def qupath_properties(object_type: str, table, row: dict, measurements: dict) -> dict:
    """A QuPath object's `properties`: its type, class (name and colour), measurements
    and histoflow's id and task."""
    task, name = row["task"], row["class_name"]
    return {
        "objectType": object_type,
        "classification": {
            "name": name,
            "color": list(class_color(table, task, name, int(row["class_id"]))),
        },
        "measurements": measurements,
        "metadata": {"histoflow_id": row["id"], "task": task},
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
    instances_path: str | Path,
    out_path: str | Path,
    sample: str,
    decimals: int = DECIMALS,
    compress: bool = False,
) -> int:
    """Write the GeoJSON (gzip with `compress`); returns the number of features
    (dropped objects are logged)."""
    table = open_instance_table(instances_path)
    written = write_features(out_path, _features(table, sample, decimals), compress)
    dropped = table.num_rows - written
    log.info("%s: %d features written, %d objects without area left out", sample, written, dropped)
    return written
