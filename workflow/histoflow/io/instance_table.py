"""The instance table, `instances.parquet` (CONTRACTS.md): schema, writer, reader.

One row per object. Rows are sorted by task (card order), then top-left corner,
centroid and area, so the file does not depend on tiling or worker count; ids are
`<task>-<y>-<x>` of the top-left corner in model pixels, with `-1`, `-2`, ... appended
to the second, third, ... object that shares a corner. The `histoflow` key of the
parquet metadata holds the stage's metadata as sorted JSON; its `tasks` maps each task
to its classes, a list of `{name, color}` in card order.

`write_instance_table` is the one writer and `open_instance_table` the one reader
(`read_instance_table` loads every row through it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from histoflow.errors import HistoflowError
from histoflow.io.atomic import atomic_output

# Measurements in level-0 pixels (px² for the area), float64, in this column order.
MEASURE_COLUMNS = (
    "centroid_x",
    "centroid_y",
    "bbox_x0",
    "bbox_y0",
    "bbox_x1",
    "bbox_y1",
    "area_px",
)

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("task", pa.string()),
        ("class_id", pa.int32()),
        ("class_name", pa.string()),
        ("probability", pa.float32()),
        *((name, pa.float64()) for name in MEASURE_COLUMNS),
        ("contour", pa.binary()),
    ]
)

COLUMNS = tuple(SCHEMA.names)

META_KEY = b"histoflow"


class InstanceTableError(HistoflowError):
    """An instance table cannot be read; the message names the file."""


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
        """Number of objects."""
        return len(self.class_id)

    @classmethod
    def empty(cls) -> Objects:
        """No objects, with the right dtypes and shapes."""
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
        """The objects of all parts, in order."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)))

    def take(self, idx) -> Objects:
        """The objects selected by an index array or boolean mask."""
        return Objects(*(getattr(self, f.name)[idx] for f in fields(self)))

    def sorted(self) -> Objects:
        """The objects in table order: corner (y, x), then centroid (y, x), then area."""
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


def _task_table(task: str, classes: list[dict], objs: Objects) -> pa.Table:
    objs = objs.sorted()
    names = np.array([c["name"] for c in classes], dtype=object)
    return pa.table(
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


def build_table(per_task: list[tuple[str, list[dict], Objects]]) -> pa.Table:
    """Arrow table from (task, classes, objects) in card order, rows in table order."""
    batches = [_task_table(task, classes, objs) for task, classes, objs in per_task]
    if not batches:
        return SCHEMA.empty_table()
    return pa.concat_tables(batches)


def write_instance_table(table: pa.Table, path: str | Path, meta: dict) -> Path:
    """Write `table` (of SCHEMA) atomically; `meta` goes to the `histoflow` key as sorted JSON."""
    if table.schema.remove_metadata() != SCHEMA:
        raise ValueError(f"instance table for '{path}' does not have the instance schema")
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True)})
    with atomic_output(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=65536)
    return Path(path)


def instance_classes(meta: dict) -> list[tuple[str, str]]:
    """(task, class name) of every class the metadata declares, in declared order."""
    return [(task, c["name"]) for task, classes in meta["tasks"].items() for c in classes]


@dataclass
class InstanceTable:
    """An opened instance table: metadata now, rows on demand."""

    path: Path
    meta: dict
    num_rows: int

    @property
    def slide_mpp(self) -> float:
        """Microns per level-0 pixel of the slide, the unit of every coordinate."""
        return float(self.meta["slide_mpp"])

    def task_classes(self, task: str) -> list[dict]:
        """The classes of `task` as declared ({name, color, ...}), or [] for no such task."""
        return self.meta["tasks"].get(task, [])

    def classes(self) -> list[tuple[str, str]]:
        """(task, class name) of every declared class, in declared order."""
        return instance_classes(self.meta)

    def batches(
        self, batch_size: int = 4096, columns: Sequence[str] = COLUMNS
    ) -> Iterator[dict[str, list]]:
        """Row batches as dicts of column -> Python list, in file order."""
        pf = pq.ParquetFile(self.path)
        for batch in pf.iter_batches(batch_size=batch_size, columns=list(columns)):
            yield batch.to_pydict()

    def read(self, columns: Sequence[str] | None = None, filters=None) -> pa.Table:
        """The rows (of `columns`, default all) as one Arrow table; `filters` as in
        `pyarrow.parquet.read_table`, e.g. [("bbox_x1", ">=", x0)]."""
        cols = None if columns is None else list(columns)
        return pq.read_table(self.path, columns=cols, filters=filters)


def _check_meta(path: Path, meta) -> None:
    if not isinstance(meta, dict) or "slide_mpp" not in meta:
        raise InstanceTableError(f"file '{path}': 'histoflow' metadata has no 'slide_mpp'")
    tasks = meta.get("tasks")
    shape_ok = isinstance(tasks, dict) and all(
        isinstance(classes, list) and all(isinstance(c, dict) and "name" in c for c in classes)
        for classes in tasks.values()
    )
    if not shape_ok:
        raise InstanceTableError(
            f"file '{path}': 'histoflow' metadata 'tasks' must map each task to a list "
            "of classes with a 'name'"
        )


def open_instance_table(path: str | Path) -> InstanceTable:
    """Open and check an instance table; errors name the file."""
    path = Path(path)
    try:
        pf = pq.ParquetFile(path)
    except (OSError, ValueError) as exc:
        raise InstanceTableError(f"file '{path}': not a readable instance table ({exc})") from exc
    raw = (pf.schema_arrow.metadata or {}).get(META_KEY)
    if raw is None:
        raise InstanceTableError(f"file '{path}': parquet metadata has no 'histoflow' key")
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise InstanceTableError(f"file '{path}': 'histoflow' metadata is not JSON") from exc
    _check_meta(path, meta)
    missing = [c for c in COLUMNS if c not in pf.schema_arrow.names]
    if missing:
        raise InstanceTableError(f"file '{path}': missing column(s) {', '.join(missing)}")
    return InstanceTable(path=path, meta=meta, num_rows=pf.metadata.num_rows)


def read_instance_table(path: str | Path) -> tuple[pa.Table, dict]:
    """The whole table and its metadata, checked as `open_instance_table` does."""
    table = open_instance_table(path)
    return table.read(), table.meta
