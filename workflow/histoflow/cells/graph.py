"""Neighbourhoods of nuclei: the Delaunay graph of centroids and neighbour counts.

Both work per task (nuclei of one post-processing task neighbour each other, not the
regions or objects of another task) on centroids in µm, so radii and edge lengths are
physical. The graph is scipy's Delaunay triangulation (Qhull); nuclei with identical
centroids share one vertex (Qhull drops the copies: they get no edges), and nuclei on
one line, which Qhull cannot triangulate, are joined in order along it. Neighbour
counts use one k-d tree per class and count, for every nucleus, the nuclei of each
class whose centroid lies within the radius (the nucleus itself not counted).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import Delaunay, QhullError, cKDTree


def _chain(points: np.ndarray) -> np.ndarray:
    """Edges (k, 2) joining points in order along their main direction."""
    centred = points - points.mean(axis=0)
    direction = np.linalg.svd(centred, full_matrices=False)[2][0]
    order = np.argsort(centred @ direction, kind="stable")
    return np.stack([order[:-1], order[1:]], axis=1)


def delaunay_edges(points: np.ndarray) -> np.ndarray:
    """Unique edges (k, 2) of the Delaunay triangulation of `points` (n, 2): i < j,
    sorted by (i, j)."""
    points = np.asarray(points, np.float64)
    n = len(points)
    if n < 2:
        return np.empty((0, 2), np.int64)
    if n == 2:
        edges = np.array([[0, 1]])
    else:
        try:
            tri = Delaunay(points)
            s = tri.simplices
            edges = np.concatenate([s[:, [0, 1]], s[:, [1, 2]], s[:, [0, 2]]])
        except QhullError:  # fewer than 3 distinct points, or all on one line
            edges = _chain(points)
    edges = np.sort(edges.astype(np.int64), axis=1)
    # one key per edge: unique on integers is much faster than on rows
    keys = np.unique(edges[:, 0] * n + edges[:, 1])
    edges = np.stack([keys // n, keys % n], axis=1)
    # identical centroids: no zero-length edges
    same = np.all(points[edges[:, 0]] == points[edges[:, 1]], axis=1)
    return edges[~same]


def graph_edges(
    points_um: np.ndarray, groups: np.ndarray, max_edge_um: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(source, target, length_um) of the Delaunay edges within each group (task), as
    global row numbers, source < target, sorted; edges longer than `max_edge_um` are
    dropped when it is given."""
    parts = []
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        local = delaunay_edges(points_um[rows])
        parts.append(rows[local])
    edges = np.concatenate(parts) if parts else np.empty((0, 2), np.int64)
    edges = edges[np.lexsort((edges[:, 1], edges[:, 0]))]
    length = np.linalg.norm(points_um[edges[:, 0]] - points_um[edges[:, 1]], axis=1)
    if max_edge_um is not None:
        keep = length <= max_edge_um
        edges, length = edges[keep], length[keep]
    return edges[:, 0], edges[:, 1], length


def degree(source: np.ndarray, target: np.ndarray, n: int) -> np.ndarray:
    """Edges at each of n vertices."""
    return (np.bincount(source, minlength=n) + np.bincount(target, minlength=n)).astype(np.int32)


def neighbour_counts(
    points_um: np.ndarray,
    groups: np.ndarray,
    classes: np.ndarray,
    n_classes: int,
    radius_um: float,
    workers: int = 1,
) -> np.ndarray:
    """(n, n_classes) int32: for each point, the points of its group of each class
    (0 .. n_classes-1) within `radius_um` (inclusive), itself excluded."""
    n = len(points_um)
    counts = np.zeros((n, n_classes), np.int32)
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        query = points_um[rows]
        for c in np.unique(classes[rows]):
            members = rows[classes[rows] == c]
            tree = cKDTree(points_um[members])
            found = tree.query_ball_point(query, radius_um, return_length=True, workers=workers)
            counts[rows, c] = found - (classes[rows] == c)
    return counts
