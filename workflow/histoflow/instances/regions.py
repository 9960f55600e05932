"""Semantic tasks: class map of a tile -> region polygons clipped to the tile core.

Regions (tumour, stroma, ...) are routinely larger than any margin, so they are not
owned by one tile like nuclei: each tile outlines every class in its core plus a
one-pixel rim, clips the outlines to the core box, and pieces that touch a seam are
joined later (`dedup.merge_pieces`). Marching squares decides a contour inside one
2x2 cell from the cell's four pixels, and both tiles beside a seam see the cells that
straddle it, so the two clipped pieces share the seam edge vertex for vertex and their
union is the polygon a whole-map pass gives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from scipy import ndimage as ndi
from skimage.measure import find_contours

from histoflow.instances.postprocess import NODATA


@dataclass
class Pieces:
    """Region pieces of one tile (model-pixel coordinates, pixel edges at integers)."""

    class_id: np.ndarray  # (k,) int32
    geoms: np.ndarray  # (k,) shapely Polygons
    area: np.ndarray  # (k,) pixel count
    sum_x: np.ndarray  # sums of pixel-centre coordinates
    sum_y: np.ndarray
    prob: np.ndarray  # sum of the class probability over the pixels
    seam: np.ndarray  # (k,) bool: touches a core edge that is not the slide edge

    @classmethod
    def empty(cls) -> Pieces:
        """No pieces."""
        f = np.empty(0)
        return cls(np.empty(0, np.int32), np.empty(0, object), f, f, f, f, np.empty(0, bool))

    @classmethod
    def concat(cls, parts: list[Pieces]) -> Pieces:
        """The pieces of all parts, in order."""
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, k) for p in parts]) for k in cls.__annotations__))

    def take(self, idx) -> Pieces:
        """The pieces selected by an index array or boolean mask."""
        return Pieces(*(getattr(self, k)[idx] for k in self.__annotations__))


def rings_to_polygons(contours: list[np.ndarray]) -> list:
    """Polygons with holes from closed marching-squares contours ((x, y) arrays).

    Outer boundaries and hole boundaries wind in opposite directions; each hole goes
    to the smallest outer ring that contains it (islands in holes are outer rings).
    """
    if not contours:
        return []
    rings = shapely.linearrings(
        np.concatenate(contours),
        indices=np.repeat(np.arange(len(contours)), [len(c) for c in contours]),
    )
    ccw = shapely.is_ccw(rings)
    shells = shapely.polygons(rings)
    # find_contours winds around high values counter-clockwise once (row, col) -> (x, y)
    outer_idx = np.flatnonzero(ccw)
    hole_idx = np.flatnonzero(~ccw)
    if len(outer_idx) == 0:
        return []
    holes_of = {i: [] for i in outer_idx}
    if len(hole_idx):
        tree = shapely.STRtree(shells[outer_idx])
        pts = shapely.points(np.stack([c[0] for c in (contours[i] for i in hole_idx)]))
        # A hole's first vertex lies inside its owner (and inside every ring around it).
        pairs = tree.query(pts, predicate="within")
        areas = shapely.area(shells[outer_idx])
        best = {}
        for h, o in zip(*pairs, strict=True):
            if h not in best or areas[o] < areas[best[h]]:
                best[h] = o
        for h, o in best.items():
            holes_of[outer_idx[o]].append(rings[hole_idx[h]])
    return [shapely.Polygon(rings[i], holes_of[i]) for i in outer_idx]


def class_pieces(
    cmap: np.ndarray,
    probs: np.ndarray,
    window: tuple[int, int, int, int],
    core: tuple[int, int, int, int],
    shape: tuple[int, int],
    classes: list[int],
) -> Pieces:
    """Pieces of every class in `classes` inside `core` (y0, y1, x0, x1, model px).

    `cmap` and `probs` cover `window`, which must hold at least a one-pixel rim around
    the core wherever the core is not at the slide edge.
    """
    wy0, _, wx0, _ = window
    cy0, cy1, cx0, cx1 = core
    H, W = shape
    ry0, ry1, rx0, rx1 = max(cy0 - 1, 0), min(cy1 + 1, H), max(cx0 - 1, 0), min(cx1 + 1, W)
    rim = cmap[ry0 - wy0 : ry1 - wy0, rx0 - wx0 : rx1 - wx0]
    inner = (slice(cy0 - ry0, cy1 - ry0), slice(cx0 - rx0, cx1 - rx0))
    box = shapely.box(cx0, cy0, cx1, cy1)
    seam_edges = (cx0 > 0, cy0 > 0, cx1 < W, cy1 < H)  # left, top, right, bottom
    out = []
    for k in classes:
        if k == NODATA:
            continue
        mask = rim == k
        core_mask = mask[inner]
        if not core_mask.any():
            continue
        # 'low' connectivity: diagonal pixels are separate regions, as 4-connected labels.
        contours = find_contours(np.pad(mask, 1).astype(np.float32), 0.5, fully_connected="low")
        # padded index -> model coordinates with pixel edges at integers
        shift = np.array([rx0 - 1 + 0.5, ry0 - 1 + 0.5])
        polys = rings_to_polygons([c[:, ::-1] + shift for c in contours])
        clipped = shapely.intersection(np.array(polys, dtype=object), box)
        parts = shapely.get_parts(clipped)
        parts = parts[(shapely.get_type_id(parts) == 3) & (shapely.area(parts) > 0)]
        if len(parts) == 0:
            continue
        comp, n = ndi.label(core_mask)
        nz = np.flatnonzero(comp)
        lab = comp.ravel()[nz]
        ys, xs = np.divmod(nz, comp.shape[1])
        ys, xs = ys + cy0, xs + cx0
        p = probs[cy0 - wy0 : cy1 - wy0, cx0 - wx0 : cx1 - wx0, k].ravel()[nz]
        area = np.bincount(lab, minlength=n + 1)[1:]
        sx = np.bincount(lab, weights=xs, minlength=n + 1)[1:]
        sy = np.bincount(lab, weights=ys, minlength=n + 1)[1:]
        sp = np.bincount(lab, weights=p, minlength=n + 1)[1:]
        # Each component's first pixel centre falls inside exactly one piece.
        _, first = np.unique(lab, return_index=True)
        pts = shapely.points(xs[first] + 0.5, ys[first] + 0.5)
        comp_i, piece_i = shapely.STRtree(parts).query(pts, predicate="within")
        m = len(parts)
        acc = [np.bincount(piece_i, weights=v[comp_i], minlength=m) for v in (area, sx, sy, sp)]
        keep = acc[0] > 0
        bounds = shapely.bounds(parts)
        seam = np.zeros(m, bool)
        for side, (j, edge) in enumerate(((0, cx0), (1, cy0), (2, cx1), (3, cy1))):
            if seam_edges[side]:
                seam |= bounds[:, j] == edge
        out.append(
            Pieces(
                np.full(int(keep.sum()), k, np.int32),
                parts[keep],
                *(a[keep] for a in acc),
                seam[keep],
            )
        )
    return Pieces.concat(out)
