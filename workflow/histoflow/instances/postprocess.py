"""Post-processors: head maps of one window -> label image (instances) or class map.

Pure array functions with no knowledge of tiles. Every step has a bounded reach (a
filter footprint, a hole no larger than `min_area`, a Gaussian truncated at 4 sigma),
except the watershed flood, which stays inside one foreground cluster; `Task.halo`
states that reach, so the tiling can keep only objects whose result cannot depend on
what lies outside the window. For the same reason nothing is normalised by window
statistics in `hovernet_fixed` (HoVer-Net's min-max normalisation of the hv gradients
is replaced by a fixed gradient threshold: hv maps are in [-1, 1] by construction).
Method `hovernet` is the published algorithm (`hovernet_published`), which normalises
by window statistics; the tiling gives it the card's margin so that tiles agree.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import disk
from skimage.segmentation import watershed

from histoflow.instances import hovernet_published
from histoflow.instances.tasks import Task

EIGHT = np.ones((3, 3), bool)
NODATA = 255  # class map value where no patch was predicted (coverage 0)


def foreground(prob: np.ndarray) -> np.ndarray:
    """(h, w) foreground probability from a 1-channel sigmoid or C-channel softmax head
    (last channel = foreground, the HoVer-Net convention)."""
    return prob[..., -1] if prob.ndim == 3 else prob


def fill_small_holes(mask: np.ndarray, max_area: float) -> np.ndarray:
    """Fill background pockets up to `max_area` px that do not touch the window border
    (a pocket cut by the border may be open outside it, so it is left alone)."""
    if max_area <= 0:
        return mask
    bg, n = ndi.label(~mask)
    if n == 0:
        return mask
    size = np.bincount(bg.ravel(), minlength=n + 1)
    fill = size <= max_area
    fill[0] = False
    border = np.concatenate([bg[0], bg[-1], bg[:, 0], bg[:, -1]])
    fill[border] = False
    return mask | fill[bg]


def _finish(labels: np.ndarray, mask: np.ndarray, n: int, task: Task) -> np.ndarray:
    """Give foreground left without a marker its own labels, drop objects outside the
    area limits and renumber the rest 1..k."""
    rest = mask & (labels == 0)
    if rest.any():
        extra, k = ndi.label(rest, structure=EIGHT)
        labels = np.where(rest, extra + n, labels)
        n += k
    area = np.bincount(labels.ravel(), minlength=n + 1)
    keep = area >= max(task.px.get("min_area") or 0.0, 1.0)
    if task.px.get("max_area") is not None:
        keep &= area <= task.px["max_area"]
    keep[0] = False
    lut = np.zeros(n + 1, np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[labels]


def watershed_labels(prob: np.ndarray, energy: np.ndarray, task: Task) -> np.ndarray:
    """Marker-controlled watershed: foreground = probability >= threshold; markers =
    maxima of the energy map within a (2r+1)² window, restricted to foreground; flood
    the negated energy inside the foreground."""
    p, px = task.params, task.px
    fg = foreground(prob) >= p["threshold"]
    if p["fill_holes"]:
        fg = fill_small_holes(fg, px.get("min_area") or 0.0)
    e = foreground(energy).astype(np.float32, copy=False)
    if px["smooth_sigma"] > 0:
        e = ndi.gaussian_filter(e, px["smooth_sigma"])
    em = np.where(fg, e, -np.inf).astype(np.float32)
    size = 2 * px["min_distance"] + 1
    # Out-of-window pixels count as -inf, so no pixel is suppressed by what is unseen;
    # objects near the border that could differ are dropped by the halo rule.
    peaks = fg & (em == ndi.maximum_filter(em, size=size, mode="constant", cval=-np.inf))
    if p["marker_threshold"] is not None:
        peaks &= e >= p["marker_threshold"]
    markers, n = ndi.label(peaks, structure=EIGHT)  # a plateau is one marker
    labels = watershed(-e, markers, mask=fg) if n else np.zeros(fg.shape, np.int32)
    return _finish(labels.astype(np.int32, copy=False), fg, n, task)


def hovernet_fixed_labels(prob: np.ndarray, hv: np.ndarray, task: Task) -> np.ndarray:
    """HoVer-Net-like post-processing with a fixed gradient threshold: where the
    horizontal map falls along x or the vertical map falls along y, a boundary (between
    nuclei, or an outer edge) lies; foreground away from boundaries, opened, gives the
    markers; flood inside the foreground from them."""
    p, px = task.params, task.px
    fg = foreground(prob) >= p["threshold"]
    if p["fill_holes"]:
        fg = fill_small_holes(fg, px.get("min_area") or 0.0)
    s = float(p["gradient_sigma_px"])
    hmap = hv[..., 0].astype(np.float32, copy=False)
    vmap = hv[..., 1].astype(np.float32, copy=False)
    # Inside a nucleus both maps rise (towards +1 at the right / bottom); they fall
    # only across boundaries, so the negative slope marks them.
    fall = np.maximum(
        -ndi.gaussian_filter(hmap, s, order=(0, 1)), -ndi.gaussian_filter(vmap, s, order=(1, 0))
    )
    boundary = np.clip(fall, 0.0, 1.0) * fg
    seeds = fg & (boundary < p["boundary_threshold"])
    r = px["marker_radius"]
    if r > 0:
        seeds = ndi.binary_opening(seeds, structure=disk(r).astype(bool))
    markers, n = ndi.label(seeds)
    if n:
        size = np.bincount(markers.ravel(), minlength=n + 1)
        small = size < (px.get("min_marker") or 0.0)
        small[0] = False
        markers[small[markers]] = 0
    surface = ndi.gaussian_filter((1.0 - boundary) * fg, 1.0)
    labels = watershed(-surface, markers, mask=fg) if n else np.zeros(fg.shape, np.int32)
    return _finish(labels.astype(np.int32, copy=False), fg, n, task)


def classify(
    labels: np.ndarray,
    n: int,
    task: Task,
    prob: np.ndarray,
    types: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Class and class probability of objects 1..n.

    Without a type head: class 0 and the mean foreground probability. With one: the
    class most pixels vote for (arg-max of the type head; HoVer-Net's rule: background
    wins only if nothing else was voted) and its mean probability over the object;
    for method `hovernet`, as published, the winner's share of the votes instead.
    """
    idx = labels.ravel()
    area = np.maximum(np.bincount(idx, minlength=n + 1)[1:], 1)
    if types is None:
        mean = np.bincount(idx, weights=foreground(prob).ravel(), minlength=n + 1)[1:] / area
        return np.zeros(n, np.int32), mean.astype(np.float32)
    if task.method == "hovernet":
        return hovernet_published.vote_types(labels, types.argmax(axis=-1))
    c = types.shape[-1]
    flat = types.reshape(-1, c)
    votes = np.bincount(idx * c + flat.argmax(axis=1), minlength=(n + 1) * c)
    votes = votes.reshape(n + 1, c)[1:]
    winner = votes.argmax(axis=1)
    bg = task.params.get("background_class")
    if bg is not None and c > 1:
        other = votes.copy()
        other[:, bg] = -1
        alt = other.argmax(axis=1)
        use = (winner == bg) & (votes[np.arange(n), alt] > 0)
        winner = np.where(use, alt, winner)
    sums = np.stack(
        [np.bincount(idx, weights=flat[:, k], minlength=n + 1)[1:] for k in range(c)], axis=1
    )
    mean = sums[np.arange(n), winner] / area
    return winner.astype(np.int32), mean.astype(np.float32)


def class_map(probs: np.ndarray, coverage: np.ndarray | None) -> np.ndarray:
    """Arg-max class per pixel (uint8); NODATA where no patch covered the pixel."""
    cmap = probs.argmax(axis=-1).astype(np.uint8)
    if coverage is not None:
        cmap[coverage == 0] = NODATA
    return cmap


def instance_labels(task: Task, maps: dict[str, np.ndarray]) -> np.ndarray:
    """Run the task's instance post-processor on window arrays keyed by head name."""
    h = task.heads
    if task.method == "watershed":
        return watershed_labels(maps[h["probability"]], maps[h["energy"]], task)
    if task.method == "hovernet":
        return hovernet_published.hovernet_labels(
            maps[h["probability"]], maps[h["hv"]], task.hover_params(), task.hover_stats
        )
    if task.method == "hovernet_fixed":
        return hovernet_fixed_labels(maps[h["probability"]], maps[h["hv"]], task)
    raise ValueError(f"task '{task.name}': {task.method} does not produce instances")
