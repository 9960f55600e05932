"""HoVer-Net's published post-processing (Graham et al. 2019, as TIAToolbox 2.1.3 runs it).

Pure array functions: np foreground probability (H, W), hv map (H, W, 2) and optional type
probabilities (H, W, C) in, an int32 label image and per-instance type and probability out.

1. Foreground: np >= 0.5, 4-connected blobs under `min_blob_size` px removed.
2. The horizontal and vertical maps are each min-max normalised to [0, 1] over the whole
   window (OpenCV NORM_MINMAX; a constant map becomes 0), then differentiated with a Sobel
   kernel of size `ksize` (21) along x and y respectively; each derivative is min-max
   normalised again and inverted, and their maximum, zeroed outside the foreground, is the
   energy: high across the boundaries between nuclei.
3. Markers: foreground where the energy < `energy_threshold` (0.4), holes filled, opened
   with a 5x5 ellipse, 4-connected markers under `min_marker_size` px removed.
4. Marker-controlled watershed (4-connected) of minus the distance-like map
   (1 - energy) * foreground, smoothed with OpenCV's 3x3 Gaussian, inside the foreground.
5. Types: per-pixel argmax of the type map, majority vote per instance; background (0)
   only when no other type voted (else the most voted other type); the probability is
   the winning type's share of the instance's pixels.

OpenCV is not used: its Sobel kernels (getDerivKernels), 3x3 Gaussian, 5x5 ellipse and
default borders (BORDER_REFLECT_101 for filters; erosion/dilation ignore the outside)
are rebuilt with numpy/scipy. Because step 2 normalises by window statistics, the result
for a pixel depends on the whole window, as it does in TIAToolbox; a tiling passes the
whole map's extremes (`HoverStats`) to every tile instead, so that the energy of a pixel
depends only on the `ksize // 2` pixels around it and tiles agree with a whole-map pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

CROSS = ndi.generate_binary_structure(2, 1)
GAUSS3 = np.array([0.25, 0.5, 0.25])  # OpenCV's fixed 3-tap Gaussian (sigma <= 0)


@dataclass(frozen=True)
class HoverParams:
    """Parameters of the published post-processing (defaults: TIAToolbox, scale 1)."""

    threshold: float = 0.5
    ksize: int = 21
    energy_threshold: float = 0.4
    min_blob_size: int = 10
    min_marker_size: int = 10
    open_size: int = 5

    @classmethod
    def scaled(cls, scale_factor: float, **others) -> HoverParams:
        """TIAToolbox's resolution scaling: ksize = int(20 s + 1), markers ceil(10 s^2);
        `others` set the remaining fields."""
        return cls(
            ksize=int(20 * scale_factor + 1),
            min_marker_size=math.ceil(10 * scale_factor**2),
            **others,
        )


@dataclass(frozen=True)
class HoverInstances:
    """Result: `labels` (H, W) int32, 0 background, instances 1..n; `types[i]` and
    `type_prob[i]` belong to label i + 1 (None without a type map)."""

    labels: np.ndarray
    types: np.ndarray | None
    type_prob: np.ndarray | None

    @property
    def count(self) -> int:
        """Number of instances."""
        return int(self.labels.max(initial=0))


@dataclass(frozen=True)
class HoverStats:
    """The extremes step 2 normalises by, when they are not the window's own: (lo, hi)
    of the horizontal and vertical maps, then of their Sobel derivatives. A tiling takes
    them over the whole map, so every tile computes the energy a whole-map pass would."""

    h: tuple[float, float]
    v: tuple[float, float]
    dh: tuple[float, float]
    dv: tuple[float, float]


def minmax(a: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """OpenCV NORM_MINMAX to [0, 1] as float32 (a constant array becomes all 0), by the
    array's own extremes or by given ones."""
    a = np.asarray(a, np.float64)
    lo = float(a.min()) if lo is None else float(lo)
    hi = float(a.max()) if hi is None else float(hi)
    scale = 1.0 / (hi - lo) if hi - lo > np.finfo(np.float64).eps else 0.0
    return ((a - lo) * scale).astype(np.float32)


def sobel_kernels(ksize: int) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's (ksize > 3) Sobel kernels: first derivative and smoothing (order 0).

    Smoothing: binomial coefficients of length ksize; derivative: binomial of length
    ksize - 1 convolved with [-1, 1] (so [-1, -2, 0, 2, 1] for ksize 5).
    """
    if ksize < 3 or ksize % 2 == 0:
        raise ValueError(f"Sobel kernel size must be odd and >= 3, not {ksize}")
    smooth = np.array([1.0])
    for _ in range(ksize - 1):
        smooth = np.convolve(smooth, [1.0, 1.0])
    deriv = np.array([1.0])
    for _ in range(ksize - 2):
        deriv = np.convolve(deriv, [1.0, 1.0])
    return np.convolve(deriv, [-1.0, 1.0]), smooth


def sobel(image: np.ndarray, axis: int, ksize: int) -> np.ndarray:
    """cv2.Sobel(image, CV_64F, dx, dy, ksize): first derivative along `axis` (1: x, dx=1;
    0: y, dy=1), smoothing along the other, correlation with BORDER_REFLECT_101."""
    deriv, smooth = sobel_kernels(ksize)
    out = ndi.correlate1d(np.asarray(image, np.float64), deriv, axis=axis, mode="mirror")
    return ndi.correlate1d(out, smooth, axis=1 - axis, mode="mirror")


def gaussian3(image: np.ndarray) -> np.ndarray:
    """cv2.GaussianBlur(image, (3, 3), 0) (kernel [1/4, 1/2, 1/4], BORDER_REFLECT_101)."""
    out = ndi.correlate1d(image, GAUSS3, axis=0, mode="mirror")
    return ndi.correlate1d(out, GAUSS3, axis=1, mode="mirror")


def ellipse(size: int) -> np.ndarray:
    """cv2.getStructuringElement(MORPH_ELLIPSE, (size, size)) as a bool array."""
    r = size // 2
    out = np.zeros((size, size), bool)
    for i in range(size):
        dy = i - r
        dx = int(np.rint(r * math.sqrt(max(r * r - dy * dy, 0) / (r * r)))) if r else 0
        out[i, max(r - dx, 0) : min(r + dx + 1, size)] = True
    return out


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Labels with objects under `min_size` px set to 0 (skimage remove_small_objects on
    a label image)."""
    if min_size <= 1 or labels.max(initial=0) == 0:
        return labels
    size = np.bincount(labels.ravel())
    small = size < min_size
    small[0] = False
    return np.where(small[labels], 0, labels)


def foreground_blobs(prob: np.ndarray, params: HoverParams) -> np.ndarray:
    """Step 1: the bool foreground, small blobs removed."""
    blobs = ndi.label(prob >= params.threshold, structure=CROSS)[0]
    return remove_small(blobs, params.min_blob_size) > 0


def gradients(
    hv: np.ndarray, ksize: int, stats: HoverStats | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Sobel derivatives of the normalised horizontal (along x) and vertical (along y)
    maps (float64), normalised by `stats` or by the window's own extremes."""
    h_ext = stats.h if stats is not None else (None, None)
    v_ext = stats.v if stats is not None else (None, None)
    dh = sobel(minmax(hv[..., 0], *h_ext), axis=1, ksize=ksize)
    dv = sobel(minmax(hv[..., 1], *v_ext), axis=0, ksize=ksize)
    return dh, dv


def energy_map(
    hv: np.ndarray, fg: np.ndarray, ksize: int, stats: HoverStats | None = None
) -> np.ndarray:
    """Step 2: float32 energy, high across boundaries, 0 outside the foreground."""
    dh, dv = gradients(hv, ksize, stats)
    dh_ext = stats.dh if stats is not None else (None, None)
    dv_ext = stats.dv if stats is not None else (None, None)
    energy = np.maximum(1.0 - minmax(dh, *dh_ext), 1.0 - minmax(dv, *dv_ext))
    return np.where(fg, energy, 0.0).astype(np.float32)


def markers(fg: np.ndarray, energy: np.ndarray, params: HoverParams) -> np.ndarray:
    """Step 3: int32 marker labels."""
    seed = ndi.binary_fill_holes(fg & (energy < params.energy_threshold))
    kernel = ellipse(params.open_size)
    seed = ndi.binary_erosion(seed, kernel, border_value=1)
    seed = ndi.binary_dilation(seed, kernel, border_value=0)
    return remove_small(ndi.label(seed, structure=CROSS)[0], params.min_marker_size)


def hovernet_labels(
    np_prob: np.ndarray,
    hv: np.ndarray,
    params: HoverParams | None = None,
    stats: HoverStats | None = None,
) -> np.ndarray:
    """Steps 1-4: the int32 label image (0 background, instances numbered 1..n).

    Args:
        np_prob: (H, W) nucleus probability, or the (H, W, 2) softmax of the np head
            (the last channel is the nucleus).
        hv: (H, W, 2) horizontal (x) and vertical (y) maps of the hv head.
        params: thresholds and sizes; the published ones by default.
        stats: extremes to normalise by (a tile of a larger map); None: the window's.
    """
    params = params or HoverParams()
    np_prob = np.asarray(np_prob)
    fg = foreground_blobs(np_prob[..., -1] if np_prob.ndim == 3 else np_prob, params)
    if not fg.any():
        return np.zeros(fg.shape, np.int32)
    energy = energy_map(np.asarray(hv), fg, params.ksize, stats)
    dist = -gaussian3((1.0 - energy.astype(np.float64)) * fg)
    labels = watershed(dist, markers=markers(fg, energy, params), mask=fg)
    return _renumber(labels)


def _renumber(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 1..n in order of their old value."""
    ids = np.unique(labels)
    lut = np.zeros(int(ids.max(initial=0)) + 1, np.int32)
    ids = ids[ids > 0]
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lut[labels]


def vote_types(labels: np.ndarray, type_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step 5: per-instance type (majority of `type_map`, (H, W) int, 0 = background, which
    wins only if nothing else voted; ties go to the smaller type) and its pixel share.

    Returns:
        (types int32, prob float32), both of length labels.max(), index i for label i + 1.
    """
    n = int(labels.max(initial=0))
    c = int(type_map.max(initial=0)) + 1
    votes = np.bincount((labels.astype(np.int64) * c + type_map).ravel(), minlength=(n + 1) * c)
    votes = votes.reshape(n + 1, c)[1:]
    best = votes.argmax(axis=1)
    if c > 1:
        other = 1 + votes[:, 1:].argmax(axis=1)
        use_other = (best == 0) & (votes[:, 1:].max(axis=1) > 0)
        best = np.where(use_other, other, best)
    area = votes.sum(axis=1)
    prob = votes[np.arange(n), best] / (area + 1.0e-6)
    return best.astype(np.int32), prob.astype(np.float32)


def hovernet_instances(
    np_prob: np.ndarray,
    hv: np.ndarray,
    type_prob: np.ndarray | None = None,
    params: HoverParams | None = None,
) -> HoverInstances:
    """HoVer-Net's published post-processing of one window.

    Args:
        np_prob: (H, W) nucleus probability, or the (H, W, 2) np softmax.
        hv: (H, W, 2) horizontal and vertical maps.
        type_prob: optional (H, W, C) type probabilities or logits (only the per-pixel
            argmax is used), channel 0 = background.
        params: thresholds and sizes; the published ones by default.

    Returns:
        labels (int32, 1..n) with per-instance types and type probabilities.
    """
    labels = hovernet_labels(np_prob, hv, params)
    if type_prob is None:
        return HoverInstances(labels, None, None)
    types, prob = vote_types(labels, np.asarray(type_prob).argmax(axis=-1))
    return HoverInstances(labels, types, prob)
