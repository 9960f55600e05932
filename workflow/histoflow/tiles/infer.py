"""infer_tiles: run a tile-level model over every tissue tile of one image.

The tiles to predict come from `tiles.plan`; they are read, batched and passed through
the model by the shared inference core (`histoflow.inference.core`). Each tile's
vector streams, with its level-0 coordinates and tissue ratio, into one
PredictionWriter per configured format (`histoflow.io.tile_stores`: Zarr, HDF5 for
CLAM/TRIDENT, NPZ), and into the tile-grid map (`map.zarr`) through a write strategy
(`tiles.strategies`). Nothing holds more than a batch of tiles, except the
strategies that cache by design (CacheTiles / WriteImage, only offered for plain
images, which are small).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass
from functools import partial

import numpy as np
from PIL import Image

from histoflow.config import schema_defaults
from histoflow.errors import SlideError
from histoflow.io.atomic import atomic_output
from histoflow.io.mask_files import read_mask
from histoflow.io.tile_stores import PredictionWriter, TileResponse, create_writer
from histoflow.tiles import metadata
from histoflow.tiles.images import PageSlide, open_samples
from histoflow.tiles.model import TileCard, build_tile_model
from histoflow.tiles.plan import TilePlan, plan_tiles
from histoflow.tiles.strategies import ImageSpec, StrategyName, WriteStrategy, make_strategy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileOptions:
    """The config section `tiles`; defaults come from the config schema."""

    model: str
    formats: list[str]
    tile_size: int | None
    mpp: float | None
    overlap: int
    min_tissue_fraction: float
    batch_size: int
    num_workers: int
    device: str
    write_strategy: str
    heatmap: list[str]

    @classmethod
    def from_config(cls, options: dict | None = None) -> TileOptions:
        """Options from the config section (keys it lacks take the schema's defaults)."""
        return cls(**{**schema_defaults("tiles"), **(options or {})})


def _read_png(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def strategy_for(slides, requested: str) -> StrategyName:
    """The map's write strategy: pyramidal slides stream; cached strategies are for plain images."""
    name = StrategyName(requested)
    plain = all(isinstance(s, PageSlide) or s.format == "image" for s in slides)
    if not plain and name is not StrategyName.WRITE_TILES_ZARR:
        log.info("pyramidal slide: map written with write_tiles_zarr (bounded memory)")
        return StrategyName.WRITE_TILES_ZARR
    return name


def open_map(stack, map_path, sample: str, plan: TilePlan, dim: int, name: StrategyName):
    """(Zarr root, strategy) of the tile-grid map, written to a temporary until `stack` closes."""
    import zarr

    spec = ImageSpec(
        shapes=tuple(p.grid.shape for p in plan.samples),
        tiles=tuple(len(p.origins) for p in plan.samples),
        channels=dim,
    )
    # Chunks of ~4 MB whatever the vector length.
    side = int(np.clip(math.sqrt(4e6 / (4 * dim)), 8, 256))
    root = zarr.create_group(store=str(stack.enter_context(atomic_output(map_path))), zarr_format=3)
    return root, make_strategy(name, {sample: spec}, root, chunks=(side, side))


def open_writers(stack, opts, outputs, num_tiles, card: TileCard, meta, mask, thumbnail):
    """One open PredictionWriter per configured format, closed (renamed) with `stack`."""
    input_genes, output_genes = card.genes
    writers = []
    for fmt in opts.formats:
        w = stack.enter_context(create_writer(fmt, outputs[fmt]))
        w.open(num_tiles, card.dim)
        w.set_metadata(meta)
        w.set_thumbnail(thumbnail[..., :3])
        w.set_tissue_mask(mask.astype(np.uint8) * 255)
        w.set_gene_names(input_genes=input_genes, output_genes=output_genes)
        writers.append(w)
    return writers


def check_output(out, n: int, card: TileCard, sample: str, slide_path) -> None:
    """A batch of `n` tiles must give (n, dim) values."""
    if out.ndim != 2 or out.shape != (n, card.dim):
        raise SlideError(
            f"model '{card.name}' returned shape {tuple(out.shape)}, expected "
            f"({n}, {card.dim}) (card output.dim)",
            sample,
            slide_path,
        )


@dataclass
class TileSinks:
    """Where the vectors go: the per-tile stores and the map's strategy, row by row."""

    writers: list[PredictionWriter]
    strategy: WriteStrategy
    plan: TilePlan
    sample: str

    def __post_init__(self):
        self.level0, self.ratios = self.plan.level0(), self.plan.ratios()
        self.infos = self.plan.infos(self.sample)
        self.row = 0

    def add(self, vectors: np.ndarray) -> None:
        """Hand the next `len(vectors)` tiles' vectors to every writer and to the map."""
        row, n = self.row, len(vectors)
        for k in range(n):
            response = TileResponse(
                vectors[k], tuple(self.level0[row + k]), float(self.ratios[row + k])
            )
            for w in self.writers:
                w.write(response)
        self.strategy.add(vectors, self.infos[row : row + n])
        self.row += n


def predict(model, card: TileCard, plan: TilePlan, opener, opts, sinks: TileSinks, where) -> None:
    """Every planned tile through the model, in plan order, into `sinks`."""
    from histoflow.inference import core

    device = core.pick_device(opts.device, "tiles.device")
    core.prepare_process(device)
    dataset = core.SlideRegions(opener, plan.regions(), plan.mpp)
    loader = core.make_loader(dataset, opts.batch_size, opts.num_workers, device)
    normalise = core.Normaliser(card.input, device, contiguous=False)
    for n, out in core.forward_batches(model.to(device), loader, normalise):
        check_output(out, n, card, *where)
        sinks.add(out.float().cpu().numpy())


def run(
    *,
    sample: str,
    slide_path: str,
    sheet_mpp: float | None,
    mask_png: str,
    thumbnail_png: str,
    mask_json: str,
    card: TileCard,
    opts: TileOptions,
    outputs: dict[str, str],
    map_path: str,
    summary_path: str,
    mask_options: dict | None = None,
    threads: int = 1,
) -> dict:
    """Predict every tissue tile of one image and write all outputs; returns the summary."""
    import torch

    started = time.perf_counter()
    torch.set_num_threads(max(1, threads))
    mask, mask_meta = read_mask(mask_png, mask_json)
    slides = open_samples(slide_path, sample, sheet_mpp)
    plan = plan_tiles(slides, mask, mask_meta, card, opts, mask_options)
    if plan.num_tiles == 0:
        log.warning("sample '%s': no tile reaches the tissue threshold; outputs are empty", sample)
    model = build_tile_model(card)
    meta = metadata.tile_metadata(sample, slide_path, plan, card, opts, mask_meta)
    name = strategy_for(slides, opts.write_strategy)
    with contextlib.ExitStack() as stack:
        thumbnail = _read_png(thumbnail_png)
        writers = open_writers(stack, opts, outputs, plan.num_tiles, card, meta, mask, thumbnail)
        root, strategy = open_map(stack, map_path, sample, plan, card.dim, name)
        opener = partial(open_samples, str(slide_path), sample, sheet_mpp)
        sinks = TileSinks(writers, strategy, plan, sample)
        predict(model, card, plan, opener, opts, sinks, (sample, slide_path))
        strategy.finish()
        root.attrs.update(metadata.map_attrs(meta, plan, name.value))
    summary = metadata.summary(meta, card, plan.num_tiles, opts.formats, name.value)
    with atomic_output(summary_path) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    log.info(
        "sample '%s': %d tiles through '%s' in %.1f s",
        sample,
        plan.num_tiles,
        card.name,
        time.perf_counter() - started,
    )
    return summary
