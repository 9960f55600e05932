"""The cell tables of measure_cells (CONTRACTS.md): `cells.parquet` and `graph.parquet`.

`cells.parquet`: one row per nucleus of the instance tasks, in instance-table order,
with the instance table's identity columns, the measurements of
`histoflow.cells.measure` and the neighbour counts of `histoflow.cells.graph`.
`graph.parquet`: the Delaunay edges between those rows (row numbers of cells.parquet)
with their length in µm. Both carry the stage's metadata as sorted JSON under the
parquet key `histoflow`.

`CellTableWriter` and `write_graph` are the writers; `open_cell_table` and `read_graph`
the readers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from histoflow.cells.measure import INTENSITY_COLUMNS, MEASUREMENT_COLUMNS, SHAPE_COLUMNS
from histoflow.errors import HistoflowError
from histoflow.io.atomic import atomic_output

META_KEY = b"histoflow"
# Copied from the instance table (level-0 pixels for the centroid).
IDENTITY_FIELDS = [
    ("id", pa.string()),
    ("task", pa.string()),
    ("class_id", pa.int32()),
    ("class_name", pa.string()),
    ("probability", pa.float32()),
    ("centroid_x", pa.float64()),
    ("centroid_y", pa.float64()),
    ("centroid_x_um", pa.float64()),
    ("centroid_y_um", pa.float64()),
]
NEIGHBOURS_TOTAL = "neighbours_total"
DEGREE = "delaunay_degree"
NEIGHBOUR_PREFIX = "neighbours_"

# Unit (or meaning) of every measurement column, for CONTRACTS.md, AnnData var and
# QuPath names.
UNITS = {
    "area_um2": "µm²",
    "perimeter_um": "µm",
    "equivalent_diameter_um": "µm",
    "major_axis_um": "µm",
    "minor_axis_um": "µm",
    "eccentricity": "1",
    "orientation_deg": "degree",
    "solidity": "1",
    "extent": "1",
    "circularity": "1",
    **{c: "OD" for c in INTENSITY_COLUMNS if "_od_" in c},
    "red_mean": "0-255",
    "green_mean": "0-255",
    "blue_mean": "0-255",
}
GRAPH_SCHEMA = pa.schema(
    [("source", pa.int64()), ("target", pa.int64()), ("length_um", pa.float32())]
)


class CellTableError(HistoflowError):
    """A cell table cannot be read; the message names the file."""


def neighbour_column(class_name: str) -> str:
    """The column counting neighbours of class `class_name` within the radius."""
    return f"{NEIGHBOUR_PREFIX}{class_name}"


def cell_schema(neighbour_classes: list[str], meta: dict | None = None) -> pa.Schema:
    """Schema of cells.parquet for these neighbour classes (measurements float32)."""
    fields = [
        *IDENTITY_FIELDS,
        *((name, pa.float32()) for name in MEASUREMENT_COLUMNS),
        (NEIGHBOURS_TOTAL, pa.int32()),
        *((neighbour_column(c), pa.int32()) for c in neighbour_classes),
        (DEGREE, pa.int32()),
    ]
    schema = pa.schema(fields)
    if meta is not None:
        schema = schema.with_metadata({META_KEY: json.dumps(meta, sort_keys=True)})
    return schema


class CellTableWriter:
    """Write cells.parquet batch by batch to `path` (the stage wraps it in
    `atomic_output`, so a killed job leaves no table)."""

    def __init__(self, path: str | Path, neighbour_classes: list[str], meta: dict):
        self.schema = cell_schema(neighbour_classes, meta)
        self._writer = pq.ParquetWriter(path, self.schema, compression="zstd")
        self.rows = 0

    def write(self, columns: dict[str, np.ndarray | list]) -> None:
        """Append rows given as column -> values (every schema column)."""
        batch = pa.record_batch(
            [pa.array(columns[f.name], f.type) for f in self.schema], schema=self.schema
        )
        self._writer.write_batch(batch, row_group_size=65536)
        self.rows += batch.num_rows

    def __enter__(self) -> CellTableWriter:
        return self

    def __exit__(self, *exc) -> None:
        self._writer.close()


@dataclass
class CellTable:
    """An opened cells.parquet: metadata now, rows on demand."""

    path: Path
    meta: dict
    num_rows: int
    columns: list[str]

    @property
    def neighbour_columns(self) -> list[str]:
        """`neighbours_total` and the per-class neighbour count columns."""
        return [c for c in self.columns if c.startswith(NEIGHBOUR_PREFIX)]

    def read(self, columns=None) -> pa.Table:
        """The rows (of `columns`, default all) as an Arrow table."""
        return pq.read_table(self.path, columns=None if columns is None else list(columns))

    def batches(self, batch_size: int = 4096, columns=None):
        """Row batches as dicts of column -> Python list, in file order."""
        pf = pq.ParquetFile(self.path)
        cols = None if columns is None else list(columns)
        for batch in pf.iter_batches(batch_size=batch_size, columns=cols):
            yield batch.to_pydict()


def _meta_of(path: Path, schema: pa.Schema) -> dict:
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise CellTableError(f"file '{path}': parquet metadata has no 'histoflow' key")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise CellTableError(f"file '{path}': 'histoflow' metadata is not JSON") from exc


def open_cell_table(path: str | Path) -> CellTable:
    """Open and check cells.parquet; errors name the file."""
    path = Path(path)
    try:
        pf = pq.ParquetFile(path)
    except (OSError, ValueError) as exc:
        raise CellTableError(f"file '{path}': not a readable cell table ({exc})") from exc
    names = pf.schema_arrow.names
    required = [n for n, _ in IDENTITY_FIELDS] + list(MEASUREMENT_COLUMNS) + [NEIGHBOURS_TOTAL]
    missing = [c for c in required if c not in names]
    if missing:
        raise CellTableError(f"file '{path}': missing column(s) {', '.join(missing)}")
    return CellTable(path, _meta_of(path, pf.schema_arrow), pf.metadata.num_rows, names)


def write_graph(
    path: str | Path, source: np.ndarray, target: np.ndarray, length_um: np.ndarray, meta: dict
) -> Path:
    """Write graph.parquet atomically: edges source < target, sorted."""
    table = pa.table(
        {
            "source": pa.array(source, pa.int64()),
            "target": pa.array(target, pa.int64()),
            "length_um": pa.array(length_um, pa.float32()),
        },
        schema=GRAPH_SCHEMA,
    ).replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True)})
    with atomic_output(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=1 << 20)
    return Path(path)


def read_graph(path: str | Path) -> tuple[pa.Table, dict]:
    """The edge list and its metadata; errors name the file."""
    path = Path(path)
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:
        raise CellTableError(f"file '{path}': not a readable graph table ({exc})") from exc
    missing = [c for c in GRAPH_SCHEMA.names if c not in table.column_names]
    if missing:
        raise CellTableError(f"file '{path}': missing column(s) {', '.join(missing)}")
    return table, _meta_of(path, table.schema)


__all__ = [
    "INTENSITY_COLUMNS",
    "MEASUREMENT_COLUMNS",
    "SHAPE_COLUMNS",
    "CellTable",
    "CellTableWriter",
    "open_cell_table",
    "read_graph",
    "write_graph",
]
