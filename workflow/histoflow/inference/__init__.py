"""Model inference over a slide.

- `core`: what dense and tile inference share: device choice, CUDA determinism, the
  heap bound, the process-safe region dataset, the loader and the normalised forward.
- `grid`: the patch grid (`cover`) used by dense, tile and synthetic grids, and the
  two tissue fractions of a box.
- `expected`: the bytes raw.zarr and maps.zarr will take, from the grid (the dry run
  prints them per slide).
- `runner`: the dense stage (`infer_patches`): `InferenceOptions` and `run`, which
  streams every tissue patch's head outputs to raw.zarr.
"""
