"""infer_tiles: run a tile-level model over every tissue tile of one image.

For each sample of the image (one for a slide or plain image, one per page of a
multi-page TIFF) the tile grid at the model's resolution is laid over the tissue
mask; tiles whose tissue ratio reaches `min_tissue_fraction` are read, batched and
passed through the model. Each tile's vector streams, with its level-0 coordinates
and tissue ratio, into one PredictionWriter per configured format (Zarr, HDF5 for
CLAM/TRIDENT, NPZ), and into the tile-grid map (`map.zarr`) through a write strategy.
Nothing holds more than a batch of tiles, except the strategies that cache by design
(CacheTiles / WriteImage, only offered for plain images, which are small).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from histoflow.config import schema_defaults
from histoflow.errors import ConfigError, SlideError
from histoflow.export.writers import TileResponse, create_writer, metadata_json
from histoflow.inference.runner import versions
from histoflow.io.atomic import atomic_output
from histoflow.tiles.grid import TileGrid
from histoflow.tiles.images import PageSlide, open_samples
from histoflow.tiles.model import TileCard, build_tile_model
from histoflow.tiles.strategies import ImageSpec, StrategyName, TileInfo, make_strategy

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
        return cls(**{**schema_defaults("tiles"), **(options or {})})


def magnification(mpp: float) -> int:
    """Objective magnification as scanners and TRIDENT name it (0.25 µm/px = 40x)."""
    for limit, mag in ((0.16, 80), (0.2, 60), (0.3, 40), (0.6, 20), (1.2, 10), (2.4, 5)):
        if mpp < limit:
            return mag
    return max(1, round(10 / mpp))


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config field 'tiles.device': '{name}' but no CUDA device is available")
    return name


@dataclass
class SamplePlan:
    """The tiles to predict on one sample (page) of the image."""

    index: int
    slide: object  # histoflow.slide.Slide (or PageSlide)
    grid: TileGrid
    origins: np.ndarray  # (n, 2) x, y at model resolution, kept tiles only
    cells: np.ndarray  # (n, 2) row, col in the grid
    ratios: np.ndarray  # (n,) tissue ratio


class TileDataset:
    """Map-style dataset of tile pixels; opens the image lazily in each worker process."""

    def __init__(self, path, sample, sheet_mpp, mpp, tile_size, items):
        self.path, self.sample, self.sheet_mpp = str(path), sample, sheet_mpp
        self.mpp, self.tile_size = mpp, tile_size
        self.items = items  # list of (sample index, x, y) at model resolution
        self._samples = None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        if self._samples is None:
            self._samples = open_samples(self.path, self.sample, self.sheet_mpp)
        s, x, y = self.items[i]
        rgb = self._samples[s].read_region(x, y, self.tile_size, self.tile_size, self.mpp)
        return np.ascontiguousarray(rgb)


def stack_tiles(batch):
    """Collate (h, w, 3) uint8 tiles into one (B, h, w, 3) tensor (module level: picklable)."""
    import torch

    return torch.from_numpy(np.stack(batch))


def plan_samples(slides, mask, mask_meta, card, opts, mask_options) -> list[SamplePlan]:
    from histoflow.tissue import MaskOptions, compute_tissue_mask

    tile = opts.tile_size or card.tile_size
    mpp = opts.mpp or card.mpp
    if opts.overlap >= tile:
        raise ConfigError(f"config field 'tiles.overlap': {opts.overlap} >= tile size {tile}")
    plans = []
    for i, slide in enumerate(slides):
        if i == 0:
            sample_mask, scale = mask, tuple(mask_meta["mask_scale"])
        else:
            # mask_tissue saw page 0 only; the other pages get their own automatic mask.
            result = compute_tissue_mask(slide, MaskOptions.from_config(mask_options))
            sample_mask, scale = result.mask, tuple(result.meta["mask_scale"])
        grid = TileGrid(slide.dimensions, slide.mpp, mpp, tile, tile - opts.overlap)
        ratios = grid.tissue_ratio(sample_mask, scale)
        keep = ratios >= opts.min_tissue_fraction
        origins = grid.origins()[keep]
        cells = np.stack(np.divmod(np.flatnonzero(keep), grid.shape[1]), 1)
        plans.append(SamplePlan(i, slide, grid, origins, cells, ratios[keep]))
        log.info(
            "sample %d: %dx%d tiles of %d px at %.4g µm/px, %d with tissue >= %.2f",
            i,
            *grid.shape,
            tile,
            mpp,
            len(origins),
            opts.min_tissue_fraction,
        )
    return plans


def tile_metadata(sample, path, slides, plans, card: TileCard, opts, mask_meta) -> dict:
    """Metadata of the outputs; the patch-geometry keys are those CLAM/TRIDENT read."""
    first = plans[0].grid
    w0, h0 = slides[0].dimensions
    pages, row = [], 0
    for p in plans:
        pages.append(
            {
                "sample": p.index,
                "page": getattr(p.slide, "page", 0),
                "dimensions": list(p.slide.dimensions),
                "grid_shape": list(p.grid.shape),
                "first_row": row,
                "num_tiles": len(p.origins),
            }
        )
        row += len(p.origins)
    input_genes, output_genes = card.genes
    return {
        "name": sample,
        "sample": sample,
        "slide_path": str(path),
        "slide_format": slides[0].format,
        "model": card.name,
        "model_card": card.card,
        "weights_sha256": card.weights_sha256(),
        "output_type": card.output_type,
        "feature_names": card.feature_names,
        "classes": card.classes,
        "input_genes": input_genes,
        "output_genes": output_genes,
        # Patch geometry (CLAM / TRIDENT): patch_size at the target resolution, read
        # from level 0 as patch_size_level0 pixels.
        "patch_size": first.tile_size,
        "patch_size_level0": first.tile_size_level0,
        "patch_level": 0,
        "overlap": opts.overlap,
        "target_mpp": first.mpp,
        "level0_mpp": first.slide_mpp,
        "target_magnification": magnification(first.mpp),
        "level0_magnification": magnification(first.slide_mpp),
        "level0_width": w0,
        "level0_height": h0,
        "level_dim": [w0, h0],
        "downsample": [first.scale, first.scale],
        "min_tissue_fraction": opts.min_tissue_fraction,
        "mask_scale": mask_meta["mask_scale"],
        "thumbnail_mpp": mask_meta["thumbnail_mpp"],
        "pages": pages,
        "versions": versions(),
    }


def _normaliser(card: TileCard, device):
    import torch

    spec = card.input
    mean = torch.tensor(spec["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec["std"], device=device).view(1, 3, 1, 1)
    scale = spec["scale"]

    def prepare(batch_uint8):
        x = batch_uint8.to(device, non_blocking=True).permute(0, 3, 1, 2).float() / scale
        return (x - mean) / std

    return prepare


def _read_png(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def run_infer_tiles(
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
    mask_meta = json.loads(Path(mask_json).read_text())
    mask = _read_png(mask_png) > 0
    slides = open_samples(slide_path, sample, sheet_mpp)
    plans = plan_samples(slides, mask, mask_meta, card, opts, mask_options)
    n_total = sum(len(p.origins) for p in plans)
    if n_total == 0:
        log.warning("sample '%s': no tile reaches the tissue threshold; outputs are empty", sample)
    device = resolve_device(opts.device)
    model = build_tile_model(card).to(device)
    prepare = _normaliser(card, device)
    meta = tile_metadata(sample, slide_path, slides, plans, card, opts, mask_meta)

    # Pyramidal slides stream into the map; the cached strategies are for plain images.
    strategy_name = StrategyName(opts.write_strategy)
    plain = all(isinstance(s, PageSlide) or s.format == "image" for s in slides)
    if not plain and strategy_name is not StrategyName.WRITE_TILES_ZARR:
        log.info("pyramidal slide: map written with write_tiles_zarr (bounded memory)")
        strategy_name = StrategyName.WRITE_TILES_ZARR
    spec = ImageSpec(
        shapes=tuple(p.grid.shape for p in plans),
        tiles=tuple(len(p.origins) for p in plans),
        channels=card.dim,
    )
    # Chunks of ~4 MB whatever the vector length D.
    side = int(np.clip(math.sqrt(4e6 / (4 * card.dim)), 8, 256))

    items = [(p.index, int(x), int(y)) for p in plans for x, y in p.origins]
    infos = [TileInfo(sample, p.index, int(r), int(c)) for p in plans for r, c in p.cells]
    level0 = np.concatenate(
        [p.grid.level0(p.origins) for p in plans] or [np.zeros((0, 2), np.int64)]
    )
    ratios = np.concatenate([p.ratios for p in plans])
    dataset = TileDataset(
        slide_path, sample, sheet_mpp, plans[0].grid.mpp, plans[0].grid.tile_size, items
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=opts.batch_size,
        num_workers=opts.num_workers,
        collate_fn=stack_tiles,
        pin_memory=device.startswith("cuda"),
        persistent_workers=False,
    )
    thumbnail = _read_png(thumbnail_png)
    input_genes, output_genes = card.genes
    with contextlib.ExitStack() as stack:
        writers = []
        for fmt in opts.formats:
            w = stack.enter_context(create_writer(fmt, outputs[fmt]))
            w.open(n_total, card.dim)
            w.set_metadata(meta)
            w.set_thumbnail(thumbnail[..., :3])
            w.set_tissue_mask(mask.astype(np.uint8) * 255)
            w.set_gene_names(input_genes=input_genes, output_genes=output_genes)
            writers.append(w)
        import zarr

        map_tmp = stack.enter_context(atomic_output(map_path))
        root = zarr.create_group(store=str(map_tmp), zarr_format=3)
        strategy = make_strategy(strategy_name, {sample: spec}, root, chunks=(side, side))
        row = 0
        with torch.inference_mode():
            for batch in loader:
                out = model(prepare(batch))
                if out.ndim != 2 or out.shape != (batch.shape[0], card.dim):
                    raise SlideError(
                        f"model '{card.name}' returned shape {tuple(out.shape)}, expected "
                        f"({batch.shape[0]}, {card.dim}) (card output.dim)",
                        sample,
                        slide_path,
                    )
                vectors = out.float().cpu().numpy()
                n = len(vectors)
                for k in range(n):
                    response = TileResponse(
                        vectors[k], tuple(level0[row + k]), float(ratios[row + k])
                    )
                    for w in writers:
                        w.write(response)
                strategy.add(vectors, infos[row : row + n])
                row += n
        strategy.finish()
        root.attrs.update(
            {
                **json.loads(metadata_json(meta)),
                "write_strategy": strategy_name.value,
                "cell_mpp": plans[0].grid.mpp * plans[0].grid.stride,
                "cell_level0": plans[0].grid.stride * plans[0].grid.scale,
            }
        )
    summary = {
        "sample": sample,
        "model": card.name,
        "weights_sha256": meta["weights_sha256"],
        "output_type": card.output_type,
        "dim": card.dim,
        "num_tiles": n_total,
        "pages": meta["pages"],
        "patch_size": meta["patch_size"],
        "patch_size_level0": meta["patch_size_level0"],
        "target_mpp": meta["target_mpp"],
        "formats": list(opts.formats),
        "write_strategy": strategy_name.value,
    }
    with atomic_output(summary_path) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    log.info(
        "sample '%s': %d tiles through '%s' in %.1f s",
        sample,
        n_total,
        card.name,
        time.perf_counter() - started,
    )
    return summary
