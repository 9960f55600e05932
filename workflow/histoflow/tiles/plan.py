"""Which tiles of an image to predict: the tile grid of each sample over its tissue mask.

For each sample of the image (one for a slide or plain image, one per page of a
multi-page TIFF) the tile grid at the model's resolution is laid over the tissue
mask; tiles whose tissue ratio reaches `min_tissue_fraction` are kept, in sample
order, row-major within a sample.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from histoflow.errors import ConfigError
from histoflow.tiles.grid import TileGrid
from histoflow.tiles.model import TileCard
from histoflow.tiles.strategies import TileInfo

log = logging.getLogger(__name__)


@dataclass
class SamplePlan:
    """The tiles to predict on one sample (page) of the image."""

    index: int
    slide: object  # histoflow.slide.Slide (or PageSlide)
    grid: TileGrid
    origins: np.ndarray  # (n, 2) x, y at model resolution, kept tiles only
    cells: np.ndarray  # (n, 2) row, col in the grid
    ratios: np.ndarray  # (n,) tissue ratio


@dataclass(frozen=True)
class TilePlan:
    """The kept tiles of every sample of one image, in prediction order."""

    samples: list[SamplePlan]
    tile_size: int  # px at `mpp`
    mpp: float

    @property
    def num_tiles(self) -> int:
        """The number of tiles to predict."""
        return sum(len(p.origins) for p in self.samples)

    def regions(self) -> np.ndarray:
        """(N, 5) int64 sample index, x, y, width, height at `mpp` of each tile."""
        rows = [
            (p.index, int(x), int(y), self.tile_size, self.tile_size)
            for p in self.samples
            for x, y in p.origins
        ]
        return np.array(rows, np.int64).reshape(-1, 5)

    def infos(self, image: str) -> list[TileInfo]:
        """Where each tile's vector goes on the tile-grid map of `image`."""
        return [TileInfo(image, p.index, int(r), int(c)) for p in self.samples for r, c in p.cells]

    def level0(self) -> np.ndarray:
        """(N, 2) int64 level-0 (x, y) of each tile's top-left corner."""
        blocks = [p.grid.level0(p.origins) for p in self.samples]
        return np.concatenate(blocks or [np.zeros((0, 2), np.int64)])

    def ratios(self) -> np.ndarray:
        """(N,) float32 tissue ratio of each tile."""
        return np.concatenate([p.ratios for p in self.samples])


def sample_masks(slides, mask, mask_meta, mask_options):
    """(mask, level-0 px per mask px) of each sample.

    mask_tissue saw page 0 only; the other pages of a stack get their own automatic mask.
    """
    from histoflow.tissue import MaskOptions, compute_tissue_mask

    yield mask, tuple(mask_meta["mask_scale"])
    for slide in slides[1:]:
        result = compute_tissue_mask(slide, MaskOptions.from_config(mask_options))
        yield result.mask, tuple(result.meta["mask_scale"])


def plan_sample(index: int, slide, grid: TileGrid, mask, mask_scale, min_tissue: float):
    """The tiles of one sample whose tissue ratio reaches `min_tissue`."""
    ratios = grid.tissue_ratio(mask, mask_scale)
    keep = ratios >= min_tissue
    cells = np.stack(np.divmod(np.flatnonzero(keep), grid.shape[1]), 1)
    return SamplePlan(index, slide, grid, grid.origins()[keep], cells, ratios[keep])


def plan_tiles(slides, mask, mask_meta, card: TileCard, opts, mask_options) -> TilePlan:
    """The tiles to predict on every sample of an image (`opts`: the TileOptions)."""
    tile = opts.tile_size or card.tile_size
    mpp = opts.mpp or card.mpp
    if opts.overlap >= tile:
        raise ConfigError(f"config field 'tiles.overlap': {opts.overlap} >= tile size {tile}")
    plans = []
    masks = sample_masks(slides, mask, mask_meta, mask_options)
    for i, (slide, (sample_mask, scale)) in enumerate(zip(slides, masks)):
        grid = TileGrid(slide.dimensions, slide.mpp, mpp, tile, tile - opts.overlap)
        plan = plan_sample(i, slide, grid, sample_mask, scale, opts.min_tissue_fraction)
        plans.append(plan)
        log.info(
            "sample %d: %dx%d tiles of %d px at %.4g µm/px, %d with tissue >= %.2f",
            i,
            *grid.shape,
            tile,
            mpp,
            len(plan.origins),
            opts.min_tissue_fraction,
        )
    return TilePlan(plans, tile, mpp)
