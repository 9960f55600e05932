"""H&E stain vectors and colour deconvolution (Ruifrok & Johnston 2001), in numpy.

The one home of the stain matrix: the built-in torch models (`models.hed`,
`tiles.default_model`) and the cell measurements (`cells.measure`) all start from
`RGB_FROM_HED`. Optical density here is the microscopist's one, base 10:
OD = -log10(I / I0) per RGB channel with I0 = 255 (white glass), I clamped to at
least 1 so black pixels stay finite (OD <= log10(255) ≈ 2.41). Deconvolution solves
OD = concentrations @ stain matrix for the haematoxylin, eosin and residual (DAB)
concentrations, in OD units: a pixel stained by haematoxylin alone at density d
gives H = d, E = 0.
"""

from __future__ import annotations

import numpy as np

# Ruifrok & Johnston (2001) stain vectors, rows = H, E, DAB optical densities (RGB);
# the matrix scikit-image's rgb2hed uses.
RGB_FROM_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64
)
STAINS = ("hematoxylin", "eosin", "residual")
# The intensity of glass (no stain) in every channel of 8-bit RGB.
WHITE = 255.0


def stain_matrix(vectors: list | np.ndarray | None = None) -> np.ndarray:
    """(3, 3) rows = unit stain vectors H, E, residual. `vectors`: the H and E vectors
    (2 rows of RGB ODs; a third row, if given, is the residual), else Ruifrok &
    Johnston's. A missing residual is the unit vector orthogonal to H and E."""
    if vectors is None:
        m = RGB_FROM_HED.copy()
    else:
        m = np.asarray(vectors, dtype=np.float64)
        if m.ndim != 2 or m.shape[1] != 3 or m.shape[0] not in (2, 3):
            raise ValueError("stain vectors: 2 or 3 rows of 3 (RGB) optical densities")
        if m.shape[0] == 2:
            m = np.vstack([m, np.cross(m[0], m[1])])
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    if np.any(norms == 0) or abs(np.linalg.det(m / norms)) < 1e-6:
        raise ValueError("stain vectors must be non-zero and linearly independent")
    return m / norms


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """OD = -log10(max(I, 1) / 255) of uint8 RGB values (..., 3), float64."""
    return -np.log10(np.maximum(np.asarray(rgb, np.float64), 1.0) / WHITE)


def deconvolve(rgb: np.ndarray, matrix: np.ndarray | None = None) -> np.ndarray:
    """Stain concentrations (..., 3) = H, E, residual (OD units) of RGB values (..., 3);
    `matrix` from `stain_matrix` (default Ruifrok & Johnston)."""
    matrix = stain_matrix() if matrix is None else matrix
    return optical_density(rgb) @ np.linalg.inv(matrix)


def deconvolution_tables(matrix: np.ndarray | None = None) -> np.ndarray:
    """(3 stains, 3 channels, 256) float64: the concentration of each stain is the sum
    over channels of table[stain, channel, value], the same as `deconvolve` without
    computing a logarithm per pixel."""
    matrix = stain_matrix() if matrix is None else matrix
    od = optical_density(np.arange(256))  # (256,)
    inverse = np.linalg.inv(matrix)  # channel -> stain
    return inverse.T[:, :, None] * od[None, None, :]
