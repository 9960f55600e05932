"""Macenko et al. (2009) H&E stain estimation: the two stain vectors of an RGB image.

Optical density (OD) of a pixel is -log((I + 1) / 256) per channel, so white glass is
0. The stained pixels' OD lies near the plane spanned by the two stains; the vectors
are the directions at robust extreme angles (percentiles `alpha` and 100 - `alpha`)
within that plane, and each stain's robust maximum concentration (99th percentile)
sets its scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_PIXELS = 100  # fewer stained pixels than this cannot define a plane


@dataclass(frozen=True)
class StainFit:
    """Unit stain vectors (rows: haematoxylin, eosin; columns: R, G, B OD) and the
    99th-percentile concentration of each stain."""

    vectors: np.ndarray  # (2, 3) float64
    max_concentration: np.ndarray  # (2,) float64

    def as_attrs(self) -> dict:
        """JSON-ready record (for a store's attributes and the provenance)."""
        return {
            "vectors": np.round(self.vectors, 6).tolist(),
            "max_concentration": np.round(self.max_concentration, 6).tolist(),
        }


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) OD of uint8 RGB: 0 for white, about 5.5 for black."""
    return -np.log((rgb.astype(np.float64) + 1.0) / 256.0)


def fit_macenko(
    rgb: np.ndarray, mask: np.ndarray | None = None, beta: float = 0.15, alpha: float = 1.0
) -> StainFit:
    """The stain vectors of the pixels of `rgb` ((..., 3) uint8) inside `mask` whose OD
    exceeds `beta` in every channel. Raises ValueError when too few pixels are stained."""
    pixels = rgb.reshape(-1, 3) if mask is None else rgb[np.asarray(mask, bool)]
    od = optical_density(pixels)
    od = od[(od > beta).all(axis=1)]
    if len(od) < MIN_PIXELS:
        raise ValueError(f"{len(od)} stained pixels (OD > {beta}); at least {MIN_PIXELS} needed")
    # The plane of the two largest principal directions (of the uncentred OD, as
    # Macenko's: the stains are rays from the origin).
    _, eigvecs = np.linalg.eigh(od.T @ od / len(od))
    plane = eigvecs[:, [2, 1]]
    plane *= np.where(plane.sum(axis=0) < 0, -1.0, 1.0)
    proj = od @ plane
    angle = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(angle, [alpha, 100 - alpha])
    ends = np.stack([plane @ [np.cos(a), np.sin(a)] for a in (lo, hi)])
    ends *= np.where(ends.sum(axis=1, keepdims=True) < 0, -1.0, 1.0)
    ends /= np.linalg.norm(ends, axis=1, keepdims=True)
    # Haematoxylin absorbs red more than eosin does.
    vectors = ends if ends[0, 0] >= ends[1, 0] else ends[::-1]
    conc, *_ = np.linalg.lstsq(vectors.T, od.T, rcond=None)
    return StainFit(vectors=vectors, max_concentration=np.percentile(conc, 99, axis=1))
