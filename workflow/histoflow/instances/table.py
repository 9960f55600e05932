"""The instance table: columnar objects per task -> `instances.parquet` (CONTRACTS.md).

Rows are sorted by task (card order), then top-left corner, centroid and area, so the
file does not depend on tiling or worker count; ids are `<task>-<y>-<x>` of the top-left
corner in model pixels, with `-1`, `-2`, ... appended to the second, third, ... object
that shares a corner.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from histoflow.io.atomic import atomic_output

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("task", pa.string()),
        ("class_id", pa.int32()),
        ("class_name", pa.string()),
        ("probability", pa.float32()),
        ("centroid_x", pa.float64()),
        ("centroid_y", pa.float64()),
        ("bbox_x0", pa.float64()),
        ("bbox_y0", pa.float64()),
        ("bbox_x1", pa.float64()),
        ("bbox_y1", pa.float64()),
        ("area_px", pa.float64()),
        ("contour", pa.binary()),
    ]
)


@dataclass
class Objects:
    """Objects of one task, one row each. Level-0 pixels unless noted."""

    class_id: np.ndarray  # int32
    probability: np.ndarray  # float32
    centroid: np.ndarray  # (n, 2) x, y
    bbox: np.ndarray  # (n, 4) x0, y0, x1, y1
    area: np.ndarray  # level-0 px²
    contour: np.ndarray  # (n,) object array of WKB bytes
    corner: np.ndarray  # (n, 2) int64 top-left y, x in model pixels (for the id)

    def __len__(self) -> int:
        return len(self.class_id)

    @classmethod
    def empty(cls) -> Objects:
        return cls(
            np.empty(0, np.int32),
            np.empty(0, np.float32),
            np.empty((0, 2)),
            np.empty((0, 4)),
            np.empty(0),
            np.empty(0, object),
            np.empty((0, 2), np.int64),
        )

    @classmethod
    def concat(cls, parts: list[Objects]) -> Objects:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)))

    def take(self, idx) -> Objects:
        return Objects(*(getattr(self, f.name)[idx] for f in fields(self)))

    def sorted(self) -> Objects:
        order = np.lexsort(
            (
                self.area,
                self.centroid[:, 0],
                self.centroid[:, 1],
                self.corner[:, 1],
                self.corner[:, 0],
            )
        )
        return self.take(order)


def object_ids(task: str, corner: np.ndarray) -> list[str]:
    """Ids for rows already sorted by corner."""
    ids, prev, k = [], None, 0
    for y, x in corner.tolist():
        k = k + 1 if (y, x) == prev else 0
        prev = (y, x)
        ids.append(f"{task}-{y}-{x}" + (f"-{k}" if k else ""))
    return ids


def build_table(per_task: list[tuple[str, list[dict], Objects]]) -> pa.Table:
    """Arrow table from (task, classes, objects) in card order."""
    batches = []
    for task, classes, objs in per_task:
        objs = objs.sorted()
        names = np.array([c["name"] for c in classes], dtype=object)
        batches.append(
            pa.table(
                {
                    "id": pa.array(object_ids(task, objs.corner), pa.string()),
                    "task": pa.array([task] * len(objs), pa.string()),
                    "class_id": pa.array(objs.class_id, pa.int32()),
                    "class_name": pa.array(names[objs.class_id].tolist(), pa.string()),
                    "probability": pa.array(objs.probability, pa.float32()),
                    "centroid_x": objs.centroid[:, 0],
                    "centroid_y": objs.centroid[:, 1],
                    "bbox_x0": objs.bbox[:, 0],
                    "bbox_y0": objs.bbox[:, 1],
                    "bbox_x1": objs.bbox[:, 2],
                    "bbox_y1": objs.bbox[:, 3],
                    "area_px": objs.area.astype(np.float64),
                    "contour": pa.array(objs.contour.tolist(), pa.binary()),
                },
                schema=SCHEMA,
            )
        )
    if not batches:
        return SCHEMA.empty_table()
    return pa.concat_tables(batches)


def write_table(table: pa.Table, path: str | Path, meta: dict) -> Path:
    """Write atomically; `meta` goes to the `histoflow` key as sorted JSON."""
    table = table.replace_schema_metadata({"histoflow": json.dumps(meta, sort_keys=True)})
    with atomic_output(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=65536)
    return Path(path)


def read_table(path: str | Path) -> tuple[pa.Table, dict]:
    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(b"histoflow", b"{}"))
    return table, meta
