"""What the per-tile outputs say about themselves: the stores' metadata and the summary.

The patch-geometry keys are those CLAM and TRIDENT read (`patch_size` at the target
resolution, read from level 0 as `patch_size_level0` pixels, magnifications, level-0
size); see workflow/CONTRACTS.md.
"""

from __future__ import annotations

import json

from histoflow.io.tile_stores import metadata_json
from histoflow.tiles.model import TileCard
from histoflow.tiles.plan import TilePlan
from histoflow.versions import package_versions


def magnification(mpp: float) -> int:
    """Objective magnification as scanners and TRIDENT name it (0.25 µm/px = 40x)."""
    for limit, mag in ((0.16, 80), (0.2, 60), (0.3, 40), (0.6, 20), (1.2, 10), (2.4, 5)):
        if mpp < limit:
            return mag
    return max(1, round(10 / mpp))


def pages(plan: TilePlan) -> list[dict]:
    """One entry per sample: its page, size, grid and rows in the stores."""
    out, row = [], 0
    for p in plan.samples:
        out.append(
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
    return out


def model_metadata(card: TileCard) -> dict:
    """The model's part of the metadata: card, weights and what the vector's values are."""
    input_genes, output_genes = card.genes
    return {
        "model": card.name,
        "model_card": card.card,
        "weights_sha256": card.weights_sha256(),
        "output_type": card.output_type,
        "feature_names": card.feature_names,
        "classes": card.classes,
        "input_genes": input_genes,
        "output_genes": output_genes,
    }


def geometry_metadata(plan: TilePlan, overlap: int) -> dict:
    """Patch geometry and slide size, under the keys CLAM / TRIDENT read."""
    first = plan.samples[0].grid
    w0, h0 = plan.samples[0].slide.dimensions
    return {
        "patch_size": first.tile_size,
        "patch_size_level0": first.tile_size_level0,
        "patch_level": 0,
        "overlap": overlap,
        "target_mpp": first.mpp,
        "level0_mpp": first.slide_mpp,
        "target_magnification": magnification(first.mpp),
        "level0_magnification": magnification(first.slide_mpp),
        "level0_width": w0,
        "level0_height": h0,
        "level_dim": [w0, h0],
        "downsample": [first.scale, first.scale],
    }


def tile_metadata(sample, path, plan: TilePlan, card: TileCard, opts, mask_meta) -> dict:
    """Metadata of every per-tile store and of the tile-grid map (`opts`: the TileOptions)."""
    return {
        "name": sample,
        "sample": sample,
        "slide_path": str(path),
        "slide_format": plan.samples[0].slide.format,
        **model_metadata(card),
        **geometry_metadata(plan, opts.overlap),
        "min_tissue_fraction": opts.min_tissue_fraction,
        "mask_scale": mask_meta["mask_scale"],
        "thumbnail_mpp": mask_meta["thumbnail_mpp"],
        "pages": pages(plan),
        "versions": package_versions(),
    }


def map_attrs(meta: dict, plan: TilePlan, strategy: str) -> dict:
    """Root attributes of the tile-grid map: canonical metadata plus the cell geometry."""
    first = plan.samples[0].grid
    return {
        **json.loads(metadata_json(meta)),
        "write_strategy": strategy,
        "cell_mpp": first.mpp * first.stride,
        "cell_level0": first.stride * first.scale,
    }


def summary(meta: dict, card: TileCard, num_tiles: int, formats, strategy: str) -> dict:
    """The stage's summary (tiles.json)."""
    return {
        "sample": meta["sample"],
        "model": card.name,
        "weights_sha256": meta["weights_sha256"],
        "output_type": card.output_type,
        "dim": card.dim,
        "num_tiles": num_tiles,
        "pages": meta["pages"],
        "patch_size": meta["patch_size"],
        "patch_size_level0": meta["patch_size_level0"],
        "target_mpp": meta["target_mpp"],
        "formats": list(formats),
        "write_strategy": strategy,
    }
