"""Synthetic data with known ground truth, for tests and benchmarks: the one home.

- `writers`: the pyramidal-TIFF writer (and plain PNGs) every generated slide uses
- `tissue`: tissue blocks with a truth mask (tissue masking)
- `slides`: H&E-like slides with known nuclei (nucleus models)
- `mosaic`: large slides mosaicked from a real one, streamed (benchmarks)
- `raw`: raw.zarr stores on the dense patch grid (merge)
- `maps`: maps.zarr stores with known objects, and their model cards (instances)
- `writer_load`: a tile load on the per-tile store writers, with their peak memory
- `cohort`: a cohort's per-slide files (masks, pictures, instance tables, logs) for the report
"""
