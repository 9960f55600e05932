"""Resource estimate for the measure_cells rule (light: imported when Snakemake parses
the workflow)."""

from __future__ import annotations

from pathlib import Path

# Bytes per rasterised nucleus pixel of a batch in flight (pixel lists, colours, sums).
BYTES_PER_PIXEL = 300
# Bytes per nucleus of the whole-table arrays (centroids, k-d trees, counts, edges).
BYTES_PER_NUCLEUS = 400
# Before the instance table exists (dry runs): nuclei and pixels per nucleus assumed.
DRY_RUN_NUCLEI = 200_000
DRY_RUN_PIXELS = 150


def estimate_mem_mb(table_path: str | Path, cfg: dict, workers: int) -> int:
    """Peak RSS (MB) of measure_cells: the main process holds the centroids of the
    whole table and up to two batches per worker in flight; each worker rasterises one
    batch and reads one block at a time. `cfg` is the validated `cells` section."""
    nuclei, pixels = DRY_RUN_NUCLEI, DRY_RUN_PIXELS
    path = Path(table_path)
    if path.is_file():
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        nuclei = pf.metadata.num_rows
        if nuclei:
            import json

            meta = json.loads((pf.schema_arrow.metadata or {}).get(b"histoflow", b"{}"))
            scale = float(meta.get("scale") or 1.0)
            area = pf.read_row_group(0, columns=["area_px"]).column(0).to_numpy()
            pixels = max(1.0, float(area.mean()) / scale**2)
    batch = int(cfg["batch_rows"]) * pixels * BYTES_PER_PIXEL
    block = (int(cfg["read_block"]) + 8) ** 2 * 3 * 6
    per_worker = batch + block
    workers = max(1, workers)
    main = nuclei * BYTES_PER_NUCLEUS + 2 * workers * batch / 4
    return int(500 + (main + workers * (200e6 + per_worker)) / 1e6)
