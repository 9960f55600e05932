"""The files stages hand to each other (workflow/CONTRACTS.md), one module per contract.

`mask_files` (mask.png, thumbnail.png, overlay.png, mask.json), `raw_zarr`
(infer/raw.zarr), `maps_zarr` (merge/maps.zarr), `instance_table`
(instances/instances.parquet), `tile_stores` (the per-tile prediction stores); each
has the one writer and the one reader of its files. `zarr_attrs` reads a store's
attributes without zarr (for rule resources) and `atomic` makes every output appear
only when complete; `npz` writes deterministic, streamed `.npz` files for the map
export and the tile stores.
"""
