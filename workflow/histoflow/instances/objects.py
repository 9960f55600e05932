"""Measurements and outlines of labelled objects in one window.

Pixel (i, j) of the model grid covers [j, j+1) x [i, i+1); level-0 coordinates are
model coordinates times `scale`. Outlines are marching-squares contours at 0.5 of the
object mask, so they run along pixel edges with corners cut, and the polygon of a
one-pixel object is a diamond of area 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from scipy import ndimage as ndi
from skimage.measure import find_contours


@dataclass
class LabelStats:
    """Per-object sums over pixels of a label image (objects 1..n, row i = label i+1).

    Coordinate sums are exact integers held in float64, so ownership tests on the
    centroid (sum / area) are exact comparisons.
    """

    area: np.ndarray  # (n,) int64 pixel count
    sum_y: np.ndarray  # (n,) float64, window-local row indices
    sum_x: np.ndarray
    bbox: np.ndarray  # (n, 4) int64 y0, y1, x0, x1 (end exclusive), window-local

    @property
    def n(self) -> int:
        """Number of labels."""
        return len(self.area)


def label_stats(labels: np.ndarray, n: int) -> LabelStats:
    """Area, coordinate sums and box of labels 1..n of `labels`."""
    nz = np.flatnonzero(labels)
    lab = labels.ravel()[nz]
    y, x = np.divmod(nz, labels.shape[1])
    area = np.bincount(lab, minlength=n + 1)[1:].astype(np.int64)
    sum_y = np.bincount(lab, weights=y, minlength=n + 1)[1:]
    sum_x = np.bincount(lab, weights=x, minlength=n + 1)[1:]
    bbox = np.zeros((n, 4), np.int64)
    for i, sl in enumerate(ndi.find_objects(labels, max_label=n)):
        if sl is not None:
            bbox[i] = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
    return LabelStats(area, sum_y, sum_x, bbox)


def outline(mask: np.ndarray) -> np.ndarray:
    """Outer contour (k, 2) in (x, y) pixel-index coordinates of a cropped object mask,
    open (first point not repeated). Holes are ignored: the outer ring is the longest."""
    padded = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), np.float32)
    padded[1:-1, 1:-1] = mask
    contours = find_contours(padded, 0.5, fully_connected="high")
    best = max(contours, key=len)
    return best[:-1, ::-1] - 1.0


def drop_collinear(coords: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """Mask of the vertices of open rings (coords, ring index per vertex, rings stored
    contiguously) that are not on a straight line through their neighbours."""
    n = len(coords)
    idx = np.arange(n)
    starts = np.r_[0, np.flatnonzero(np.diff(ring)) + 1]
    ends = np.r_[starts[1:], n] - 1
    first, last = starts[ring], ends[ring]
    prev = np.where(idx == first, last, idx - 1)
    nxt = np.where(idx == last, first, idx + 1)
    a, b = coords - coords[prev], coords[nxt] - coords
    cross = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
    return cross != 0


def object_polygons(
    labels: np.ndarray,
    ids: np.ndarray,
    bbox: np.ndarray,
    origin: tuple[int, int],
    scale: float,
    simplify_px: float = 0.0,
) -> np.ndarray:
    """Level-0 polygons (shapely array) of objects `ids` (labels) with local boxes `bbox`;
    `origin` (y0, x0) is the window's position in model pixels. Vertices on straight
    runs are dropped (lossless); `simplify_px` > 0 simplifies further."""
    if len(ids) == 0:
        return np.empty(0, object)
    rings, sizes = [], []
    for i, (y0, y1, x0, x1) in zip(ids, bbox, strict=True):
        c = outline(labels[y0:y1, x0:x1] == i)
        c += (x0 + origin[1] + 0.5, y0 + origin[0] + 0.5)
        rings.append(c)
        sizes.append(len(c))
    coords = np.concatenate(rings)
    ring_index = np.repeat(np.arange(len(rings)), sizes)
    keep = drop_collinear(coords, ring_index)
    polys = shapely.polygons(shapely.linearrings(coords[keep] * scale, indices=ring_index[keep]))
    if simplify_px > 0:
        polys = shapely.simplify(polys, simplify_px * scale, preserve_topology=True)
    return polys
