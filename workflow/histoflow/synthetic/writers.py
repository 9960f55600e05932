"""Writing generated images as slides: the one pyramidal-TIFF writer, and plain PNGs.

The TIFF is tiled, with 2x-downsampled levels and resolution tags in pixels per cm,
which OpenSlide reads as a generic TIFF with its mpp. A level is an array, or a
`TiledLevel` whose tiles are made on the fly (so a large slide never sits in memory).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image


@dataclass(frozen=True)
class TiledLevel:
    """One pyramid level given as its (H, W) shape and its tiles, row-major."""

    shape: tuple[int, int]
    tiles: Iterator[np.ndarray]


def halvings(rgb: np.ndarray, min_level_size: int = 256) -> Iterator[np.ndarray]:
    """`rgb`, then 2x box-downsampled levels while the last one is more than twice
    `min_level_size` on its shorter side."""
    level = rgb
    yield level
    while min(level.shape[:2]) > 2 * min_level_size:
        h, w = level.shape[:2]
        level = np.asarray(Image.fromarray(level).resize((w // 2, h // 2), Image.Resampling.BOX))
        yield level


def write_pyramidal_tiff(
    path: str | os.PathLike,
    levels: np.ndarray | Iterable[np.ndarray | TiledLevel],
    mpp: float,
    tile: int = 256,
    compression: str = "jpeg",
    compressionargs: dict | None = None,
    bigtiff: bool = False,
) -> Path:
    """Write `levels` (level 0 first; an RGB array stands for its `halvings`) at `mpp`.

    Written under a hidden sibling and renamed, so a crash leaves no half slide.
    """
    path = Path(path)
    if isinstance(levels, np.ndarray):
        levels = halvings(levels, min_level_size=tile)
    px_per_cm = 1e4 / mpp
    tmp = path.with_name(f".{path.name}.tmp")
    with tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tif:
        for i, level in enumerate(levels):
            if isinstance(level, TiledLevel):
                data, shape = level.tiles, (*level.shape, 3)
            else:
                data, shape = level, None
            tif.write(
                data,
                shape=shape,
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression=compression,
                compressionargs=compressionargs,
                resolution=(px_per_cm / 2**i, px_per_cm / 2**i),
                resolutionunit="CENTIMETER",
                subfiletype=1 if i else 0,
            )
    os.replace(tmp, path)
    return path


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """A plain RGB image; its mpp goes in the sample sheet."""
    Image.fromarray(rgb).save(path)
    return Path(path)


def write_slide(path: str | os.PathLike, rgb: np.ndarray, mpp: float, **tiff_options) -> Path:
    """`.tif`/`.tiff`: a pyramidal TIFF with its mpp; any other suffix: a plain image."""
    if Path(path).suffix.lower() in (".tif", ".tiff"):
        return write_pyramidal_tiff(path, rgb, mpp, **tiff_options)
    return write_png(path, rgb)
