"""Generated slides with known tissue: pink blocks with purple nuclei on a white background."""

from __future__ import annotations

import numpy as np

PINK = np.array([232, 170, 200], dtype=np.float32)
PURPLE = np.array([110, 60, 150], dtype=np.float32)


def tissue_blocks(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """RGB image and its boolean truth mask: rectangles and an ellipse of stained tissue."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((height, width), bool)
    truth[int(0.10 * height) : int(0.45 * height), int(0.08 * width) : int(0.50 * width)] = True
    truth[int(0.55 * height) : int(0.90 * height), int(0.60 * width) : int(0.92 * width)] = True
    yy, xx = np.mgrid[:height, :width]
    cy, cx, ry, rx = 0.72 * height, 0.25 * width, 0.15 * height, 0.14 * width
    truth |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    img = np.full((height, width, 3), 245.0, np.float32)
    img[truth] = PINK
    # Nuclei: small purple dots inside tissue only, so tissue is not flat colour.
    n = int(truth.sum() / 400)
    ys, xs = rng.integers(0, height, n), rng.integers(0, width, n)
    keep = truth[ys, xs]
    for y, x in zip(ys[keep], xs[keep]):
        img[max(0, y - 3) : y + 4, max(0, x - 3) : x + 4] = PURPLE
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), truth
