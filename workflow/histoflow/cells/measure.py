"""Per-nucleus shape and stain measurements, vectorised over many objects at once.

Objects arrive as polygons in model pixels (pixel (i, j) covers [j, j+1) x [i, i+1), as
in `histoflow.instances.objects`). `rasterise` turns them into pixel lists: a pixel
belongs to an object when its centre lies inside the polygon (even-odd rule, so holes
stay empty). For the outlines extract_instances writes (marching squares at 0.5
between pixel centres) this gives back exactly the pixels of the object's label.

The shape measurements are scikit-image's regionprops definitions computed for all
objects at once from those pixel lists (tests/test_cells_measure.py checks them
against regionprops): area, the axes, eccentricity and orientation from the central
moments (axis length = 4 sqrt(eigenvalue of the covariance), as regionprops), the
perimeter by skimage.measure.perimeter's 4-neighbourhood weights, extent over the
pixel box. Solidity is the outline's area over its convex hull's (both of the
polygon), circularity 4 pi area / perimeter² (1 for a disk, lower for irregular or
elongated nuclei; capped at 1, as digital perimeters of small disks run short).

Intensities are read at the same pixels from an RGB image at model resolution and
unmixed into haematoxylin and eosin optical densities (`histoflow.stains`).

Each object's values depend only on its own polygon and the image values at its own
pixels, so objects overlapping each other, tiles or batches do not change them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely

from histoflow import stains

SHAPE_COLUMNS = (
    "area_um2",
    "perimeter_um",
    "equivalent_diameter_um",
    "major_axis_um",
    "minor_axis_um",
    "eccentricity",
    "orientation_deg",
    "solidity",
    "extent",
    "circularity",
)
STAIN_STATS = ("mean", "std", "min", "max")
INTENSITY_COLUMNS = (
    *(f"hematoxylin_od_{s}" for s in STAIN_STATS),
    *(f"eosin_od_{s}" for s in STAIN_STATS),
    "red_mean",
    "green_mean",
    "blue_mean",
)
MEASUREMENT_COLUMNS = (*SHAPE_COLUMNS, *INTENSITY_COLUMNS)

# skimage.measure.perimeter (neighbourhood 4): weights of the codes of border pixels.
_PERIMETER_WEIGHTS = np.zeros(50)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1.0
_PERIMETER_WEIGHTS[[21, 33]] = math.sqrt(2)
_PERIMETER_WEIGHTS[[13, 23]] = (1 + math.sqrt(2)) / 2


@dataclass
class Pixels:
    """Pixels of n objects, grouped by object (rows, then columns, in order).

    `y`, `x`: model-pixel indices (row, column); `starts[k]:starts[k+1]` are object k's.
    """

    n: int
    obj: np.ndarray  # (p,) int64
    y: np.ndarray  # (p,) int64
    x: np.ndarray  # (p,) int64

    @property
    def starts(self) -> np.ndarray:
        """(n + 1,) offsets of each object's pixels."""
        return np.searchsorted(self.obj, np.arange(self.n + 1))

    @property
    def counts(self) -> np.ndarray:
        """(n,) pixels per object."""
        return np.bincount(self.obj, minlength=self.n)

    def take(self, keep: np.ndarray) -> Pixels:
        """The pixels selected by a boolean mask."""
        return Pixels(self.n, self.obj[keep], self.y[keep], self.x[keep])


def _edges(polys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start and end points (e, 2) of every ring edge, and the object of each edge."""
    parts, part_obj = shapely.get_parts(polys, return_index=True)
    rings, ring_part = shapely.get_rings(parts, return_index=True)
    coords, ring = shapely.get_coordinates(rings, return_index=True)
    same = ring[1:] == ring[:-1]  # consecutive points of one (closed) ring
    obj = part_obj[ring_part[ring[:-1][same]]]
    return coords[:-1][same], coords[1:][same], obj


def _group_rank(keys: tuple[np.ndarray, ...]) -> np.ndarray:
    """Position of each element within its run of equal keys (arrays already sorted)."""
    n = len(keys[0])
    new = np.zeros(n, bool)
    new[:1] = True
    for k in keys:
        new[1:] |= k[1:] != k[:-1]
    start = np.maximum.accumulate(np.where(new, np.arange(n), 0))
    return np.arange(n) - start


def rasterise(polys: np.ndarray, n: int | None = None) -> Pixels:
    """Pixels whose centres lie inside each polygon (a shapely array in model pixels).

    Scanline fill of all polygons at once: each edge crosses the pixel-centre rows
    between its end points (half-open, so a vertex on a row counts once), crossings are
    sorted by object, row and x, and consecutive pairs bound the runs of inside pixels.
    """
    polys = np.asarray(polys, dtype=object)
    n = len(polys) if n is None else n
    empty = np.empty(0, np.int64)
    present = ~shapely.is_missing(polys) & ~shapely.is_empty(polys) if len(polys) else []
    if not np.any(present):
        return Pixels(n, empty, empty, empty)
    index = np.flatnonzero(present)
    p0, p1, eobj = _edges(polys[index])
    eobj = index[eobj]
    # Pixel centres at integers: shift by half a pixel.
    x0, y0 = p0[:, 0] - 0.5, p0[:, 1] - 0.5
    x1, y1 = p1[:, 0] - 0.5, p1[:, 1] - 0.5
    r0 = np.ceil(np.minimum(y0, y1)).astype(np.int64)
    r1 = np.ceil(np.maximum(y0, y1)).astype(np.int64)
    rows = np.maximum(r1 - r0, 0)
    edge = np.repeat(np.arange(len(rows)), rows)
    if len(edge) == 0:
        return Pixels(n, empty, empty, empty)
    offsets = np.arange(len(edge)) - np.repeat(np.cumsum(rows) - rows, rows)
    row = r0[edge] + offsets
    dy = y1[edge] - y0[edge]
    xc = x0[edge] + (row - y0[edge]) * (x1[edge] - x0[edge]) / dy
    obj = eobj[edge]
    order = np.lexsort((xc, row, obj))
    obj, row, xc = obj[order], row[order], xc[order]
    rank = _group_rank((obj, row))
    left = np.flatnonzero(rank % 2 == 0)
    left = left[left + 1 < len(xc)]
    left = left[(obj[left + 1] == obj[left]) & (row[left + 1] == row[left])]
    c0 = np.ceil(xc[left]).astype(np.int64)
    c1 = np.ceil(xc[left + 1]).astype(np.int64)
    width = np.maximum(c1 - c0, 0)
    span = np.repeat(np.arange(len(width)), width)
    cols = c0[span] + (np.arange(len(span)) - np.repeat(np.cumsum(width) - width, width))
    return Pixels(n, obj[left][span], row[left][span], cols)


def _per_object_min_max(values: np.ndarray, pixels: Pixels) -> tuple[np.ndarray, np.ndarray]:
    """Min and max of `values` over each object's pixels (NaN for no pixels)."""
    lo = np.full(pixels.n, np.nan)
    hi = np.full(pixels.n, np.nan)
    if len(values):
        starts = pixels.starts
        has = starts[1:] > starts[:-1]
        at = starts[:-1][has]
        lo[has] = np.minimum.reduceat(values, at)
        hi[has] = np.maximum.reduceat(values, at)
    return lo, hi


def _perimeter(pixels: Pixels, y0: np.ndarray, x0: np.ndarray, h: np.ndarray, w: np.ndarray):
    """skimage.measure.perimeter (neighbourhood 4) of every object, in pixels.

    Each object is laid into its own slot of a flat buffer (its box plus a 1-pixel
    frame, with its own row stride), so that neighbour look-ups of one object never see
    another's pixels.
    """
    stride = w + 2
    size = (h + 2) * stride
    base = np.cumsum(size) - size
    o = pixels.obj
    s = stride[o]
    flat = base[o] + (pixels.y - y0[o] + 1) * s + (pixels.x - x0[o] + 1)
    filled = np.zeros(int(size.sum()), bool)
    filled[flat] = True
    inner = filled[flat - 1] & filled[flat + 1] & filled[flat - s] & filled[flat + s]
    border = np.zeros_like(filled)
    bflat = flat[~inner]
    border[bflat] = True
    bs = s[~inner]
    # skimage's code: 1 (the pixel) + 2 per border 4-neighbour + 10 per border diagonal.
    code = np.ones(len(bflat), np.int64)
    for step, weight in ((1, 2), (bs, 2), (bs - 1, 10), (bs + 1, 10)):
        code += weight * (border[bflat - step].astype(np.int64) + border[bflat + step])
    return np.bincount(o[~inner], weights=_PERIMETER_WEIGHTS[code], minlength=pixels.n)


def _moments(pixels: Pixels, y0: np.ndarray, x0: np.ndarray, area: np.ndarray):
    """Covariance (population) of each object's pixel coordinates: cyy, cxx, cxy."""
    o = pixels.obj
    yy = (pixels.y - y0[o]).astype(np.float64)
    xx = (pixels.x - x0[o]).astype(np.float64)
    n = np.maximum(area, 1)
    my = np.bincount(o, weights=yy, minlength=pixels.n) / n
    mx = np.bincount(o, weights=xx, minlength=pixels.n) / n
    dy, dx = yy - my[o], xx - mx[o]
    cyy = np.bincount(o, weights=dy * dy, minlength=pixels.n) / n
    cxx = np.bincount(o, weights=dx * dx, minlength=pixels.n) / n
    cxy = np.bincount(o, weights=dy * dx, minlength=pixels.n) / n
    return cyy, cxx, cxy


def shape_measurements(pixels: Pixels, polys: np.ndarray, mpp: float) -> dict[str, np.ndarray]:
    """SHAPE_COLUMNS of every object (float64; NaN where undefined, e.g. no pixels)."""
    area = pixels.counts.astype(np.float64)
    has = area > 0
    y0, y1 = _per_object_min_max(pixels.y, pixels)
    x0, x1 = _per_object_min_max(pixels.x, pixels)
    y0i = np.where(has, y0, 0).astype(np.int64)
    x0i = np.where(has, x0, 0).astype(np.int64)
    h = np.where(has, y1 - y0 + 1, 0).astype(np.int64)
    w = np.where(has, x1 - x0 + 1, 0).astype(np.int64)
    perimeter = _perimeter(pixels, y0i, x0i, h, w)
    cyy, cxx, cxy = _moments(pixels, y0i, x0i, area)
    # Eigenvalues of [[cyy, cxy], [cxy, cxx]]
    half_trace = (cyy + cxx) / 2
    root = np.sqrt(((cyy - cxx) / 2) ** 2 + cxy**2)
    l1, l2 = half_trace + root, np.maximum(half_trace - root, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        eccentricity = np.where(l1 > 0, np.sqrt(np.clip(1 - l2 / l1, 0, 1)), 0.0)
        # Major axis direction from the x axis, towards +y (image rows, down).
        orientation = np.degrees(0.5 * np.arctan2(2 * cxy, cxx - cyy))
        poly_area = shapely.area(polys)
        hull_area = shapely.area(shapely.convex_hull(polys))
        solidity = np.where(hull_area > 0, poly_area / hull_area, np.nan)
        circularity = np.minimum(4 * math.pi * area / perimeter**2, 1.0)
        extent = area / (h * w)
    out = {
        "area_um2": area * mpp * mpp,
        "perimeter_um": perimeter * mpp,
        "equivalent_diameter_um": np.sqrt(4 * area / math.pi) * mpp,
        "major_axis_um": 4 * np.sqrt(l1) * mpp,
        "minor_axis_um": 4 * np.sqrt(l2) * mpp,
        "eccentricity": eccentricity,
        "orientation_deg": np.where(orientation <= -90, orientation + 180, orientation),
        "solidity": solidity,
        "extent": extent,
        "circularity": np.where(perimeter > 0, circularity, np.nan),
    }
    for key in out:
        if key != "area_um2":
            out[key] = np.where(has, out[key], np.nan)
    return out


def _mean_std(values: np.ndarray, pixels: Pixels, area: np.ndarray):
    n = np.maximum(area, 1)
    mean = np.bincount(pixels.obj, weights=values, minlength=pixels.n) / n
    dev = values - mean[pixels.obj]
    var = np.bincount(pixels.obj, weights=dev * dev, minlength=pixels.n) / n
    empty = area == 0
    return np.where(empty, np.nan, mean), np.where(empty, np.nan, np.sqrt(var))


def intensity_measurements(
    pixels: Pixels, rgb: np.ndarray, matrix: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """INTENSITY_COLUMNS from `rgb` (p, 3) uint8, the colour of each pixel of `pixels`."""
    area = pixels.counts
    tables = stains.deconvolution_tables(matrix)
    r, g, b = (rgb[:, c] for c in range(3))
    out: dict[str, np.ndarray] = {}
    for k, stain in enumerate(("hematoxylin", "eosin")):
        values = tables[k, 0][r] + tables[k, 1][g] + tables[k, 2][b]
        mean, std = _mean_std(values, pixels, area)
        lo, hi = _per_object_min_max(values, pixels)
        out |= {
            f"{stain}_od_mean": mean,
            f"{stain}_od_std": std,
            f"{stain}_od_min": lo,
            f"{stain}_od_max": hi,
        }
    for k, channel in enumerate(("red", "green", "blue")):
        out[f"{channel}_mean"] = _mean_std(rgb[:, k].astype(np.float64), pixels, area)[0]
    return out
