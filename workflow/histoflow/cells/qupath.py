"""QuPath cell objects of one slide (`export/{sample}.cells.geojson[.gz]`).

Each nucleus of cells.parquet becomes a GeoJSON Feature as QuPath writes cells: `id` a
UUID (the same as the nucleus' detection in `{sample}.geojson`: a function of sample
and instance id), `geometry` the cell boundary, `nucleusGeometry` (a member of the
Feature, beside `geometry`) the nucleus outline, and properties `objectType: "cell"`,
`classification` {name, color [r, g, b] ints}, `measurements` and `metadata`.

The cell boundary is the nucleus grown by `expansion_um`, limited by its neighbours as
QuPath's cell expansion is: the grown nucleus is cut to the nucleus' Voronoi region
(of the centroids of its task's nuclei), and the nucleus itself always belongs to its
cell. The table is streamed in chunks; each chunk's Voronoi diagram includes every
nucleus close enough to change its cells, so the result does not depend on chunking.

Measurements are named as QuPath names those of its own cell detection (`Nucleus:
Area µm^2`, `Nucleus: Hematoxylin OD mean`, `Cell: Area µm^2`, ...), never like the
ones QuPath computes itself (`Centroid X µm`); non-finite values are "NaN".
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import shapely

from histoflow.cells.measure import MEASUREMENT_COLUMNS
from histoflow.export.geojson import (
    DECIMALS,
    geometry_json,
    measurement,
    qupath_properties,
    write_features,
)
from histoflow.export.instances import object_uuid, polygonal_array
from histoflow.io.cell_table import DEGREE, NEIGHBOURS_TOTAL, open_cell_table
from histoflow.io.instance_table import open_instance_table
from histoflow.io.rows import read_rows

log = logging.getLogger(__name__)

# cells.parquet column -> QuPath measurement name.
MEASUREMENT_NAMES = {
    "area_um2": "Nucleus: Area µm^2",
    "perimeter_um": "Nucleus: Perimeter µm",
    "equivalent_diameter_um": "Nucleus: Equivalent diameter µm",
    "major_axis_um": "Nucleus: Major axis µm",
    "minor_axis_um": "Nucleus: Minor axis µm",
    "eccentricity": "Nucleus: Eccentricity",
    "orientation_deg": "Nucleus: Orientation degrees",
    "solidity": "Nucleus: Solidity",
    "extent": "Nucleus: Extent",
    "circularity": "Nucleus: Circularity",
    **{
        f"{stain}_od_{stat}": f"Nucleus: {stain.capitalize()} OD {label}"
        for stain in ("hematoxylin", "eosin")
        for stat, label in (("mean", "mean"), ("std", "std dev"), ("min", "min"), ("max", "max"))
    },
    "red_mean": "Nucleus: Red mean",
    "green_mean": "Nucleus: Green mean",
    "blue_mean": "Nucleus: Blue mean",
}
# What QuPath computes for every object and shows beside the stored measurements.
QUPATH_COMPUTED = ("Centroid X µm", "Centroid Y µm")
CHUNK_ROWS = 4096
CELL_COLUMNS = ("id", "task", "class_id", "class_name", "probability", "centroid_x", "centroid_y")


def measurement_names(neighbour_columns: list[str], radius_um: float) -> dict[str, str]:
    """cells.parquet column -> QuPath name for every exported column."""
    names = dict(MEASUREMENT_NAMES)
    within = f"Neighbours within {radius_um:g} µm"
    for column in neighbour_columns:
        if column == NEIGHBOURS_TOTAL:
            names[column] = within
        else:
            names[column] = f"{within}: {column.removeprefix('neighbours_')}"
    names[DEGREE] = "Delaunay degree"
    names["probability"] = "Detection probability"
    return names


class Centroids:
    """Every nucleus centroid (level-0 px) and task, indexed by y for window queries."""

    def __init__(self, xy: np.ndarray, task: np.ndarray):
        self.xy, self.task = xy, task
        self.order = np.argsort(xy[:, 1], kind="stable")
        self.y_sorted = xy[self.order, 1]

    def near(self, x0, y0, x1, y1, task) -> np.ndarray:
        """Rows of `task` with centroids in the box, sorted."""
        lo, hi = np.searchsorted(self.y_sorted, [y0, y1], side="left")
        rows = self.order[lo:hi]
        x = self.xy[rows, 0]
        rows = rows[(x >= x0) & (x <= x1) & (self.task[rows] == task)]
        return np.sort(rows)


def voronoi_regions(points: np.ndarray, extent) -> np.ndarray:
    """The Voronoi region (shapely polygon) of each point within `extent` (a
    polygon); points sharing a position share a region."""
    unique, inverse = np.unique(points, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    if len(unique) == 1:
        return np.array([extent] * len(points), dtype=object)
    diagram = shapely.voronoi_polygons(shapely.multipoints(unique), extend_to=extent, ordered=True)
    regions = shapely.get_parts(diagram)
    return regions[inverse]


def cell_boundaries(
    nuclei: np.ndarray, centroids: np.ndarray, context: np.ndarray, distance_px: float
) -> np.ndarray:
    """Cells of `nuclei` (polygons, level-0 px) with `centroids`: each nucleus grown by
    `distance_px` within its Voronoi region among `context` (all centroids that may
    matter, the nuclei's own included), joined with the nucleus."""
    if distance_px <= 0 or len(nuclei) == 0:
        return nuclei.copy()
    # the outline simplified by a pixel first: the grown boundary needs no finer steps,
    # and buffering is most of the export's time
    grown = shapely.buffer(shapely.simplify(nuclei, 1.0), distance_px, quad_segs=3)
    points = np.vstack([centroids, context])
    bounds = shapely.total_bounds(grown)
    extent = shapely.box(*(bounds + np.array([-1, -1, 1, 1]) * (distance_px + 1)))
    regions = voronoi_regions(points, extent)[: len(nuclei)]
    cells = shapely.union(nuclei, shapely.intersection(grown, regions))
    return cells


def _feature(sample, table, row: dict, cell, nucleus, names, decimals) -> dict:
    mpp = table.slide_mpp
    measurements = {names[k]: measurement(row[k], 4) for k in names}
    cell_area = shapely.area(cell) * mpp * mpp
    measurements["Cell: Area µm^2"] = measurement(cell_area, 3)
    ratio = row["area_um2"] / cell_area if cell_area > 0 else math.nan
    measurements["Nucleus/Cell area ratio"] = measurement(ratio, 4)
    return {
        "type": "Feature",
        "id": object_uuid(sample, row["id"]),
        "geometry": geometry_json(cell, decimals),
        "nucleusGeometry": geometry_json(nucleus, decimals),
        "properties": qupath_properties("cell", table, row, measurements),
    }


def _features(cells_path, instances_path, sample, expansion_um, decimals) -> Iterator[dict]:
    cells = open_cell_table(cells_path)
    instances = open_instance_table(instances_path)
    tasks = list(cells.meta["tasks"])
    names = measurement_names(cells.neighbour_columns, cells.meta["neighbour_radius_um"])
    columns = sorted(set(CELL_COLUMNS) | set(names) | set(MEASUREMENT_COLUMNS))
    ident = cells.read(columns=["task", "centroid_x", "centroid_y"])
    xy = np.stack([ident["centroid_x"].to_numpy(), ident["centroid_y"].to_numpy()], axis=1)
    task = np.asarray(ident["task"].to_numpy(zero_copy_only=False), dtype=object)
    index = Centroids(xy, task)
    distance = expansion_um / instances.slide_mpp
    # instance rows of the cells' tasks, in order: row k of cells.parquet is the k-th
    inst_task = np.asarray(
        instances.read(columns=["task"])["task"].to_numpy(zero_copy_only=False), dtype=object
    )
    inst_rows = np.flatnonzero(np.isin(inst_task, np.asarray(tasks, dtype=object)))
    for start in range(0, cells.num_rows, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, cells.num_rows)
        rows = read_rows(cells.path, start, stop, columns)
        src = inst_rows[start:stop]
        wkb = read_rows(instances.path, int(src[0]), int(src[-1]) + 1, ["contour", "id"])
        keep = np.isin(np.arange(src[0], src[-1] + 1), src)
        if list(wkb["id"][keep]) != list(rows["id"]):
            raise ValueError(f"file '{cells_path}': rows do not match '{instances_path}'")
        nuclei = polygonal_array(shapely.from_wkb(wkb["contour"][keep]), 10.0**-decimals)
        cells_geom = np.full(len(nuclei), None, dtype=object)
        for t in np.unique(rows["task"]):
            of_task = np.flatnonzero((rows["task"] == t) & ~shapely.is_missing(nuclei))
            if len(of_task) == 0:
                continue
            polys = nuclei[of_task]
            x0, y0, x1, y1 = shapely.total_bounds(polys)
            # a centroid farther than this from every nucleus of the chunk cannot bound
            # any of their grown cells
            box = shapely.bounds(polys)
            largest = float(np.hypot(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]).max())
            reach = 2 * (distance + largest) + 1
            near = index.near(x0 - reach, y0 - reach, x1 + reach, y1 + reach, t)
            own = xy[start + of_task]
            grown = cell_boundaries(polys, own, xy[near], distance)
            cells_geom[of_task] = polygonal_array(
                shapely.set_precision(grown, 10.0**-decimals), 10.0**-decimals
            )
        for i in range(len(nuclei)):
            if nuclei[i] is None or cells_geom[i] is None:
                log.warning("cell %s has no polygon area; left out", rows["id"][i])
                continue
            row = {k: v[i] for k, v in rows.items()}
            yield _feature(sample, instances, row, cells_geom[i], nuclei[i], names, decimals)


def export_cells(
    cells_path: str | Path,
    instances_path: str | Path,
    out_path: str | Path,
    sample: str,
    expansion_um: float = 5.0,
    compress: bool = False,
    decimals: int = DECIMALS,
) -> int:
    """Write the QuPath cells GeoJSON (gzip with `compress`); returns the cell count."""
    features = _features(cells_path, instances_path, sample, expansion_um, decimals)
    written = write_features(out_path, features, compress)
    log.info("%s: %d cells written (expansion %g µm)", sample, written, expansion_um)
    return written


__all__ = ["QUPATH_COMPUTED", "cell_boundaries", "export_cells"]
