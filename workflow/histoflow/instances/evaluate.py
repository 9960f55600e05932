"""Comparing object sets by IoU: tiled vs whole-map runs, or results vs ground truth."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely


@dataclass(frozen=True)
class Match:
    """Counts of a one-to-one matching and the mean IoU of its pairs."""

    tp: int
    fp: int  # in `found`, unmatched
    fn: int  # in `truth`, unmatched
    mean_iou: float  # over matched pairs

    @property
    def f1(self) -> float:
        """F1 score; 1.0 when both sets are empty."""
        d = 2 * self.tp + self.fp + self.fn
        return 1.0 if d == 0 else 2 * self.tp / d


def _pair_iou(a: np.ndarray, b: np.ndarray, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    inter = shapely.area(shapely.intersection(a[ia], b[ib]))
    union = shapely.area(a[ia]) + shapely.area(b[ib]) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def match(found: np.ndarray, truth: np.ndarray, iou: float = 0.5) -> Match:
    """One-to-one matching at IoU >= `iou` (>= 0.5 makes matches unique; greedy by IoU)."""
    found = np.asarray(found, dtype=object)
    truth = np.asarray(truth, dtype=object)
    if len(found) == 0 or len(truth) == 0:
        return Match(0, len(found), len(truth), 0.0)
    ib, ia = shapely.STRtree(found).query(truth, predicate="intersects")
    v = _pair_iou(found, truth, ia, ib)
    ok = v >= iou
    ia, ib, v = ia[ok], ib[ok], v[ok]
    used_a, used_b, ious = set(), set(), []
    for k in np.argsort(-v, kind="stable"):
        if ia[k] in used_a or ib[k] in used_b:
            continue
        used_a.add(ia[k])
        used_b.add(ib[k])
        ious.append(v[k])
    tp = len(ious)
    return Match(tp, len(found) - tp, len(truth) - tp, float(np.mean(ious)) if ious else 0.0)


def duplicates(geoms: np.ndarray, iou: float = 0.3) -> int:
    """Number of pairs of objects overlapping with IoU > `iou`."""
    geoms = np.asarray(geoms, dtype=object)
    if len(geoms) < 2:
        return 0
    a, b = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    sel = a < b
    return int((_pair_iou(geoms, geoms, a[sel], b[sel]) > iou).sum())


def label_polygons(labels: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Level-0 polygons of every object of a label image (e.g. synthetic ground truth)."""
    from histoflow.instances.objects import label_stats, object_polygons

    ids = np.unique(labels)
    ids = ids[ids > 0]
    if len(ids) == 0:
        return np.empty(0, object)
    lut = np.zeros(int(labels.max()) + 1, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1)
    dense = lut[labels]
    stats = label_stats(dense, len(ids))
    return object_polygons(dense, np.arange(1, len(ids) + 1), stats.bbox, (0, 0), scale)
