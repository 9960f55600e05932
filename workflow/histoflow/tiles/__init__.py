"""Tile-level models and plain images: the `infer_tiles` stage.

Tile-level models (patch classifiers, feature extractors) give one vector per tile.

- `infer`: the stage, `TileOptions` and `run`: tiles through the model (by the shared
  inference core) into the per-tile stores (`histoflow.io.tile_stores`: Zarr, HDF5 for
  CLAM/TRIDENT, NPZ) and the tile-grid map.
- `plan`: which tiles of each sample to predict; `grid`: the tile grid and tissue ratio.
- `metadata`: the stores' metadata, the map's attributes and the stage summary.
- `strategies`: the write strategies of the tile-grid map, its one layout and reader.
- `images`: plain images and multi-page TIFFs as lists of samples.
- `model`, `default_model`: tile-model cards and the built-in weight-free models.
- `sheet`: a sample sheet for a folder of images.
"""
