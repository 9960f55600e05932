"""Instance tables and slides with known nuclei, for the cell measurement tests and the
benchmark.

`write_label_table` turns a label image at model resolution into an instance table
exactly as extract_instances writes it (outlines, centroids, boxes in level-0 pixels).
`ellipse_labels` draws non-overlapping digital ellipses; `stain_image` colours a label
image by Beer-Lambert mixing of known haematoxylin and eosin densities, with the stain
vectors the measurements unmix with, so the densities are known. `write_ellipse_table`
writes a large table straight from ellipse outlines on a jittered grid (no label image
of the slide is ever held), for the benchmark.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import shapely

from histoflow import stains
from histoflow.instances.objects import label_stats, object_polygons, outline
from histoflow.io.instance_table import Objects, build_table, write_instance_table

NUCLEUS_CLASSES = [
    {"name": "Tumour", "color": "#d62728"},
    {"name": "Lymphocyte", "color": "#2ca02c"},
]


def ellipse_mask(shape, cy, cx, ry, rx, angle) -> np.ndarray:
    """(H, W) bool: pixel centres (i + 0.5, j + 0.5) inside the ellipse centred at
    (cy, cx) with semi-axes ry (along `angle` from the y axis) and rx."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    dy, dx = yy + 0.5 - cy, xx + 0.5 - cx
    u = dy * math.cos(angle) + dx * math.sin(angle)
    v = -dy * math.sin(angle) + dx * math.cos(angle)
    return (u / ry) ** 2 + (v / rx) ** 2 <= 1


def ellipse_labels(shape, ellipses) -> np.ndarray:
    """Label image (int32) of (cy, cx, ry, rx, angle) ellipses, label i = row i - 1;
    where two overlap the first keeps the pixel."""
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx, ry, rx, angle) in enumerate(ellipses):
        r = math.ceil(max(ry, rx)) + 1
        y0, x0 = max(0, math.floor(cy) - r), max(0, math.floor(cx) - r)
        y1, x1 = min(shape[0], math.floor(cy) + r + 1), min(shape[1], math.floor(cx) + r + 1)
        if y1 <= y0 or x1 <= x0:
            continue
        m = ellipse_mask((y1 - y0, x1 - x0), cy - y0, cx - x0, ry, rx, angle)
        window = labels[y0:y1, x0:x1]
        window[m & (window == 0)] = i + 1
    return labels


def stain_image(
    labels: np.ndarray,
    h_density: np.ndarray,
    e_density: np.ndarray,
    background: tuple[float, float] = (0.05, 0.3),
    matrix: np.ndarray | None = None,
) -> np.ndarray:
    """RGB uint8: label i (1-based) at haematoxylin density h_density[i-1] and eosin
    density e_density[i-1] (OD units), label 0 at `background` (H, E)."""
    matrix = stains.stain_matrix() if matrix is None else matrix
    h = np.r_[background[0], h_density][labels]
    e = np.r_[background[1], e_density][labels]
    od = h[..., None] * matrix[0] + e[..., None] * matrix[1]
    return np.clip(np.round(stains.WHITE * np.power(10.0, -od)), 0, 255).astype(np.uint8)


def table_meta(
    mpp: float, slide_mpp: float, shape, classes=None, sample: str = "synthetic", task="nuclei"
) -> dict:
    """Instance-table metadata as extract_instances writes it."""
    return {
        "sample": sample,
        "model": "synthetic",
        "mpp": mpp,
        "slide_mpp": slide_mpp,
        "scale": mpp / slide_mpp,
        "shape": list(shape),
        "tile_shape": list(shape),
        "margin": 0,
        "tasks": {task: classes or NUCLEUS_CLASSES},
        "methods": {task: "watershed"},
    }


def label_objects(labels: np.ndarray, scale: float, class_id: np.ndarray | None = None) -> Objects:
    """The objects of a label image (labels 1..n at model resolution) in level-0 px."""
    n = int(labels.max())
    stats = label_stats(labels, n)
    present = np.flatnonzero(stats.area > 0)
    polys = object_polygons(labels, present + 1, stats.bbox[present], (0, 0), scale)
    area = stats.area[present].astype(np.float64)
    cx = (stats.sum_x[present] / area + 0.5) * scale
    cy = (stats.sum_y[present] / area + 0.5) * scale
    box = stats.bbox[present]  # y0, y1, x0, x1
    cls = np.zeros(n, np.int32) if class_id is None else np.asarray(class_id, np.int32)
    return Objects(
        cls[present],
        np.full(len(present), 0.9, np.float32),
        np.stack([cx, cy], axis=1),
        box[:, [2, 0, 3, 1]].astype(np.float64) * scale,
        area * scale * scale,
        shapely.to_wkb(polys),
        box[:, [0, 2]],
    )


def write_label_table(
    path: str | os.PathLike,
    labels: np.ndarray,
    mpp: float,
    slide_mpp: float,
    class_id: np.ndarray | None = None,
    classes=None,
    sample: str = "synthetic",
) -> Path:
    """Write the instance table of a label image at model resolution."""
    scale = mpp / slide_mpp
    objs = label_objects(labels, scale, class_id)
    classes = classes or NUCLEUS_CLASSES
    table = build_table([("nuclei", classes, objs)])
    meta = table_meta(mpp, slide_mpp, labels.shape, classes, sample)
    return write_instance_table(table, path, meta)


def _shape_library(n: int, radius: tuple[float, float], seed: int):
    """`n` digital ellipse outlines (centred on their box) with their masks' sizes."""
    rng = np.random.default_rng(seed)
    shapes = []
    for _ in range(n):
        ry = rng.uniform(*radius)
        rx = ry * rng.uniform(0.55, 1.0)
        side = 2 * math.ceil(ry) + 3
        mask = ellipse_mask((side, side), side / 2, side / 2, ry, rx, rng.uniform(0, math.pi))
        ring = outline(mask) + 0.5
        shapes.append((ring - side / 2, int(mask.sum()), side))
    return shapes


def write_ellipse_table(
    path: str | os.PathLike,
    shape: tuple[int, int],
    mpp: float,
    slide_mpp: float,
    spacing: float = 20.0,
    radius: tuple[float, float] = (3.0, 7.0),
    seed: int = 0,
    batch: int = 50_000,
    sample: str = "synthetic",
) -> int:
    """An instance table of ellipse nuclei on a jittered grid over `shape` (H, W) model
    px, two classes, written in row batches; returns the number of nuclei."""
    rng = np.random.default_rng(seed)
    scale = mpp / slide_mpp
    library = _shape_library(64, radius, seed)
    h, w = shape
    ys, xs = np.mgrid[spacing : h - spacing : spacing, spacing : w - spacing : spacing]
    cy = np.round(ys.ravel() + rng.uniform(-0.25, 0.25, ys.size) * spacing)
    cx = np.round(xs.ravel() + rng.uniform(-0.25, 0.25, xs.size) * spacing)
    pick = rng.integers(0, len(library), cy.size)
    class_id = (rng.random(cy.size) < 0.3).astype(np.int32)
    parts = []
    for start in range(0, cy.size, batch):
        sl = slice(start, start + batch)
        rings = [library[k][0] + (x, y) for k, y, x in zip(pick[sl], cy[sl], cx[sl])]
        index = np.repeat(np.arange(len(rings)), [len(r) for r in rings])
        polys = shapely.polygons(shapely.linearrings(np.concatenate(rings) * scale, indices=index))
        area = np.array([library[k][1] for k in pick[sl]], np.float64)
        bounds = shapely.bounds(polys)
        centroid = shapely.get_coordinates(shapely.centroid(polys))
        corner = np.floor(bounds[:, [1, 0]] / scale).astype(np.int64)
        parts.append(
            Objects(
                class_id[sl],
                np.full(len(rings), 0.9, np.float32),
                centroid,
                bounds,
                area * scale * scale,
                shapely.to_wkb(polys),
                corner,
            )
        )
    objs = Objects.concat(parts)
    table = build_table([("nuclei", NUCLEUS_CLASSES, objs)])
    write_instance_table(table, path, table_meta(mpp, slide_mpp, shape, sample=sample))
    return len(objs)
