"""SQLite annotation store: objects with WKB geometry and an R-tree on their boxes.

Schema (level-0 pixel coordinates throughout):

    objects(fid INTEGER PRIMARY KEY, id TEXT UNIQUE, class TEXT, probability REAL,
            geometry BLOB, properties TEXT)
    objects_rtree(id, min_x, max_x, min_y, max_y)   -- rtree virtual table, id = fid
    metadata(key TEXT PRIMARY KEY, value TEXT)      -- JSON values

`id` is the same UUID as in the GeoJSON; `properties` is JSON with the instance id,
task, class id, area and centroid. `query_rect` answers "which objects are in this
viewport": R-tree candidates by box, then an exact geometry test.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import shapely

from histoflow.export import ExportError
from histoflow.export.instances import object_uuid, polygonal_array
from histoflow.io.atomic import atomic_output
from histoflow.io.instance_table import InstanceTable, open_instance_table

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE metadata (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE objects (
    fid INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    class TEXT NOT NULL,
    probability REAL NOT NULL,
    geometry BLOB NOT NULL,
    properties TEXT NOT NULL
);
CREATE VIRTUAL TABLE objects_rtree USING rtree(id, min_x, max_x, min_y, max_y);
"""


def _json(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _metadata(table: InstanceTable, sample: str) -> list[tuple[str, str]]:
    meta = {
        "sample": sample,
        "coordinates": "level-0 pixels, x right, y down",
        "slide_mpp": table.slide_mpp,
        "model": table.meta.get("model"),
        "tasks": table.meta["tasks"],
        "scale": table.meta.get("scale"),
    }
    return [(k, _json(v)) for k, v in sorted(meta.items())]


def _object_row(fid: int, sample: str, row: dict, geom, mpp: float) -> tuple:
    props = {
        "instance_id": row["id"],
        "task": row["task"],
        "class_id": int(row["class_id"]),
        "area_um2": float(row["area_px"]) * mpp * mpp,
        "centroid_x": float(row["centroid_x"]),
        "centroid_y": float(row["centroid_y"]),
    }
    return (
        fid,
        object_uuid(sample, row["id"]),
        row["class_name"],
        float(row["probability"]),
        shapely.to_wkb(geom),
        _json(props),
    )


def _insert_objects(con: sqlite3.Connection, table: InstanceTable, sample: str) -> int:
    """Insert every object with polygon area, batch by batch; returns the last fid."""
    fid = 0
    for batch in table.batches():
        rows, boxes = [], []
        for i, geom in enumerate(polygonal_array(shapely.from_wkb(batch["contour"]))):
            if geom is None:
                continue
            fid += 1
            row = {k: v[i] for k, v in batch.items()}
            rows.append(_object_row(fid, sample, row, geom, table.slide_mpp))
            x0, y0, x1, y1 = geom.bounds
            boxes.append((fid, x0, x1, y0, y1))
        con.executemany("INSERT INTO objects VALUES (?, ?, ?, ?, ?, ?)", rows)
        con.executemany("INSERT INTO objects_rtree VALUES (?, ?, ?, ?, ?)", boxes)
    return fid


def export_sqlite(instances_path: str | Path, out_path: str | Path, sample: str) -> int:
    """Write the store; returns the number of objects."""
    table = open_instance_table(instances_path)
    with atomic_output(out_path) as tmp:
        con = sqlite3.connect(tmp, isolation_level=None)
        try:
            try:
                con.executescript(SCHEMA)
            except sqlite3.OperationalError as exc:
                raise ExportError(
                    f"sample '{sample}': SQLite lacks the R-tree module ({exc})"
                ) from exc
            con.execute("BEGIN")
            con.executemany("INSERT INTO metadata VALUES (?, ?)", _metadata(table, sample))
            fid = _insert_objects(con, table, sample)
            con.execute("COMMIT")
        finally:
            con.close()
    dropped = table.num_rows - fid
    log.info("%s: %d objects stored, %d without area left out", sample, fid, dropped)
    return fid


def query_rect(
    db: str | Path | sqlite3.Connection,
    x0: float,
    y0: float,
    x1: float,
    y1: float,
    exact: bool = True,
) -> list[dict]:
    """Objects whose geometry intersects the rectangle [x0, x1] x [y0, y1] (level-0 px).

    The R-tree stores boxes as float32 rounded outwards, so its answer is a superset;
    `exact` then keeps the objects whose geometry really intersects the rectangle.
    Results are in insertion order, each a dict with the columns and a shapely
    `geometry`.
    """
    con = (
        db
        if isinstance(db, sqlite3.Connection)
        else sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    )
    try:
        cur = con.execute(
            "SELECT o.fid, o.id, o.class, o.probability, o.geometry, o.properties "
            "FROM objects_rtree AS r JOIN objects AS o ON o.fid = r.id "
            "WHERE r.max_x >= ? AND r.min_x <= ? AND r.max_y >= ? AND r.min_y <= ? "
            "ORDER BY o.fid",
            (x0, x1, y0, y1),
        )
        rows = cur.fetchall()
    finally:
        if con is not db:
            con.close()
    rect = shapely.box(x0, y0, x1, y1)
    out = []
    for fid, uid, cls, prob, wkb, props in rows:
        geom = shapely.from_wkb(wkb)
        if exact and not shapely.intersects(rect, geom):
            continue
        out.append(
            {
                "fid": fid,
                "id": uid,
                "class": cls,
                "probability": prob,
                "geometry": geom,
                "properties": json.loads(props),
            }
        )
    return out
