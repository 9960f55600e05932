"""Generated H&E-like slides with known nuclei, for tests of the nucleus models.

Colours come from Beer-Lambert mixing of haematoxylin and eosin optical densities.
The stain vectors are Macenko's reference H&E vectors, deliberately not the
Ruifrok & Johnston matrix the built-in model deconvolves with, so a test that the
model finds these nuclei does not just invert the generator.

`make_nuclei_slide` writes a pyramidal tiled TIFF with resolution tags (OpenSlide
reads it as a generic TIFF, mpp included) or, for `.png`, a plain image whose mpp
goes in the sample sheet; it returns the ground truth.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from histoflow.synthetic.writers import write_slide

# Macenko et al. (2009) reference stain vectors (OD per RGB channel), as used by
# common stain-normalisation tools.
H_VECTOR = np.array([0.5626, 0.7201, 0.4062])
E_VECTOR = np.array([0.2159, 0.8012, 0.5581])
GLASS_RGB = (243, 243, 241)


@dataclass(frozen=True)
class NucleiTruth:
    """Ground truth in level-0 pixels (the generated image has no other level of truth)."""

    labels: np.ndarray  # (H, W) int32: 0 outside nuclei, i for the i-th nucleus (1-based)
    tissue: np.ndarray  # (H, W) bool: stained tissue (nuclei included), False on glass
    ellipses: np.ndarray  # (n, 5) float64: cy, cx, ry, rx, angle (radians), label i = row i-1
    touching: list[tuple[int, int]]  # label pairs placed in contact (split by watershed)
    mpp: float

    @property
    def nuclei(self) -> np.ndarray:
        """(H, W) bool: inside any nucleus."""
        return self.labels > 0


def _ellipse_mask(shape, cy, cx, ry, rx, angle):
    r = math.ceil(max(ry, rx)) + 1
    y0, x0 = max(0, int(cy) - r), max(0, int(cx) - r)
    y1, x1 = min(shape[0], int(cy) + r + 1), min(shape[1], int(cx) + r + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    dy, dx = yy + 0.5 - cy, xx + 0.5 - cx  # pixel centres
    u = dy * math.cos(angle) + dx * math.sin(angle)
    v = -dy * math.sin(angle) + dx * math.cos(angle)
    return (slice(y0, y1), slice(x0, x1)), (u / ry) ** 2 + (v / rx) ** 2 <= 1


def render_nuclei(
    height: int,
    width: int,
    mpp: float = 0.5,
    density: float = 2500.0,
    radius_um: tuple[float, float] = (2.5, 4.5),
    touching_pairs: int = 4,
    glass_fraction: float = 0.15,
    seed: int = 0,
) -> tuple[np.ndarray, NucleiTruth]:
    """RGB uint8 image and truth: pink stroma with dark haematoxylin ellipses.

    `density` is nuclei per mm² of tissue; radii are semi-axes in µm. The left
    `glass_fraction` of the width is bare glass (for tissue masks). Nuclei do not
    overlap; `touching_pairs` pairs are placed in contact.
    """
    rng = np.random.default_rng(seed)
    tissue = np.ones((height, width), bool)
    tissue[:, : round(glass_fraction * width)] = False
    labels = np.zeros((height, width), np.int32)
    ellipses: list[tuple[float, ...]] = []
    touching: list[tuple[int, int]] = []
    area_mm2 = tissue.sum() * (mpp * 1e-3) ** 2
    target = max(1, round(density * area_mm2))
    lo, hi = (r / mpp for r in radius_um)
    x_min = round(glass_fraction * width)

    def place(cy, cx, ry, rx, angle, allow: int = 0) -> bool:
        sl, m = _ellipse_mask((height, width), cy, cx, ry, rx, angle)
        if m.sum() == 0 or not tissue[sl][m].all():
            return False
        # A 1-px ring around it must be free (except for the partner of a touching pair),
        # so separate nuclei never merge into one connected blob.
        ring = ndimage.binary_dilation(m, iterations=1)
        hit = labels[sl][ring]
        if np.any((hit != 0) & (hit != allow)):
            return False
        labels[sl][m & (labels[sl] == 0)] = len(ellipses) + 1
        ellipses.append((cy, cx, ry, rx, angle))
        return True

    attempts = 0
    while len(touching) < touching_pairs and attempts < 2000:
        attempts += 1
        ry, rx = rng.uniform(lo, hi, 2)
        cy = rng.uniform(hi + 2, height - hi - 2)
        cx = rng.uniform(x_min + 3 * hi, width - 3 * hi)
        if not place(cy, cx, ry, ry, 0.0):
            continue
        first = len(ellipses)
        ry2 = rng.uniform(lo, hi)
        # Two circles touching along x with a short shared boundary.
        cx2 = cx + (ry + ry2) * 0.92
        if place(cy, cx2, ry2, ry2, 0.0, allow=first):
            touching.append((first, first + 1))
        else:
            sl, _ = _ellipse_mask((height, width), cy, cx, ry, ry, 0.0)
            labels[sl][labels[sl] == first] = 0
            ellipses.pop()
    attempts = 0
    while len(ellipses) < target and attempts < 50 * target:
        attempts += 1
        ry, rx = np.sort(rng.uniform(lo, hi, 2))[::-1]
        place(
            rng.uniform(0, height),
            rng.uniform(x_min, width),
            ry,
            rx,
            rng.uniform(0, math.pi),
        )

    # Stain concentrations: fibrous eosin texture in stroma, chromatin texture in nuclei.
    fibres = ndimage.gaussian_filter(rng.normal(0, 1, (height, width)), (1.0, 4.0))
    fibres /= fibres.std() + 1e-9
    conc_e = np.where(tissue, 0.28 + 0.08 * fibres, 0.0)
    conc_h = np.where(tissue, 0.04 + 0.02 * rng.random((height, width)), 0.0)
    nuc = labels > 0
    chromatin = ndimage.gaussian_filter(rng.normal(0, 1, (height, width)), 1.0)
    chromatin /= chromatin.std() + 1e-9
    per_nucleus = rng.uniform(0.75, 1.15, len(ellipses) + 1)
    conc_h = np.where(nuc, per_nucleus[labels] + 0.12 * chromatin, conc_h)
    conc_e = np.where(nuc, 0.10, conc_e)
    # Optics blur the stain edges a little, as a scanner's point spread does.
    conc_h = ndimage.gaussian_filter(np.clip(conc_h, 0, None), 0.7)
    conc_e = ndimage.gaussian_filter(np.clip(conc_e, 0, None), 0.7)
    od = conc_h[..., None] * H_VECTOR + conc_e[..., None] * E_VECTOR
    rgb = 255.0 * np.power(10.0, -od)
    rgb = np.where(tissue[..., None], rgb, np.array(GLASS_RGB, np.float64))
    rgb += rng.normal(0, 3.0, rgb.shape)
    image = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
    truth = NucleiTruth(
        labels=labels,
        tissue=tissue,
        ellipses=np.array(ellipses, np.float64).reshape(-1, 5),
        touching=touching,
        mpp=mpp,
    )
    return image, truth


def make_nuclei_slide(
    path: str | os.PathLike,
    width: int = 1024,
    height: int = 1024,
    mpp: float = 0.5,
    seed: int = 0,
    **render_options,
) -> NucleiTruth:
    """Write a generated nuclei slide (`.tif`/`.tiff`: pyramidal, mpp in the file;
    `.png`: plain image, give its mpp in the sheet) and return its ground truth."""
    image, truth = render_nuclei(height, width, mpp=mpp, seed=seed, **render_options)
    # Lossless: the nucleus tests compare against the rendered pixels' truth.
    write_slide(path, image, mpp, compression="zlib")
    return truth
