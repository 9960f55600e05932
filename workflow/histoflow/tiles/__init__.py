"""Tile-level models and plain images.

Tile-level models (patch classifiers, feature extractors) give one vector per tile;
`infer_tiles` streams those vectors, with level-0 coordinates and tissue ratios, to
the prediction writers (Zarr, HDF5 for CLAM/TRIDENT, NPZ), and stitches them into a
tile-grid map through a write strategy (`strategies`). Plain images (PNG, JPEG,
non-pyramidal and multi-page TIFF) go through the same code (`images`).
"""
