"""Cross-tile checks with shapely STRtrees.

Instances: ownership by centroid (`tiling.ownership`) already reports each object
once; `resolve_overlaps` is the safety net for what the rule cannot promise (objects
larger than the margin, watershed floods that differ between windows). Objects from
different tiles whose outlines overlap by more than a pixel contradict each other,
since a segmentation is a partition; the one that had more context (farther from its
window's edge) wins. Only objects near a seam are checked.

Regions: `merge_pieces` joins pieces of the same class that share an edge across a
seam (touching at a corner only is not a connection, as in the 4-connected labelling).
"""

from __future__ import annotations

import numpy as np
import shapely

from histoflow.instances.regions import Pieces


def resolve_overlaps(
    geoms: np.ndarray,
    tile: np.ndarray,
    rank: np.ndarray,
    min_overlap: float,
) -> np.ndarray:
    """Boolean mask of objects to drop.

    `rank` orders the objects (lower = preferred, all distinct); an object is dropped
    when it overlaps a preferred object from another tile by more than `min_overlap`
    (area units of the geometries).
    """
    drop = np.zeros(len(geoms), bool)
    if len(geoms) < 2:
        return drop
    a, b = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    sel = (a < b) & (tile[a] != tile[b])
    a, b = a[sel], b[sel]
    if len(a) == 0:
        return drop
    overlap = shapely.area(shapely.intersection(geoms[a], geoms[b])) > min_overlap
    a, b = a[overlap], b[overlap]
    # Greedy in preference order: keep an object unless a kept one contradicts it.
    first, second = np.where(rank[a] < rank[b], a, b), np.where(rank[a] < rank[b], b, a)
    order = np.argsort(rank[first], kind="stable")
    for f, s in zip(first[order], second[order], strict=True):
        if not drop[f]:
            drop[s] = True
    return drop


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected-component id of n nodes joined by edges (a, b) (union-find)."""
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(a.tolist(), b.tolist(), strict=True):
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return np.array([find(i) for i in range(n)])


def merge_pieces(pieces: Pieces) -> Pieces:
    """Join seam pieces of the same class that share an edge; sums add up."""
    if len(pieces.geoms) == 0:
        return pieces
    a, b = shapely.STRtree(pieces.geoms).query(pieces.geoms, predicate="touches")
    sel = (a < b) & (pieces.class_id[a] == pieces.class_id[b])
    a, b = a[sel], b[sel]
    # boundaries meeting along a line (dimension 1), not in a point
    edge = shapely.relate_pattern(pieces.geoms[a], pieces.geoms[b], "F***1****")
    comp = _components(len(pieces.geoms), a[edge], b[edge])
    roots, inverse = np.unique(comp, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    groups = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
    geoms = np.empty(len(roots), object)
    for r, members in enumerate(groups):
        g = pieces.geoms[members]
        geoms[r] = g[0] if len(g) == 1 else shapely.union_all(g)

    def add(v):
        return np.bincount(inverse, weights=v, minlength=len(roots))

    return Pieces(
        pieces.class_id[roots],  # a root is the smallest piece index of its group
        geoms,
        add(pieces.area),
        add(pieces.sum_x),
        add(pieces.sum_y),
        add(pieces.prob),
        np.zeros(len(roots), bool),
    )
