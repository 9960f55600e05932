"""Export stage: the outputs of earlier stages in formats that other tools open.

One module per concern: `dense` (slide-scale maps to Zarr/HDF5/NPZ), `ometiff`
(pyramidal heatmaps), `tile_heatmap` (per-tile maps as pictures), `instances` (what
the object exporters share: UUIDs, class colours, valid polygons), `geojson`,
`sqlite_store`, `tables` (per-object TSV) and `summary` (per-slide TSV). Stores are
read through `histoflow.io`; every writer goes through `histoflow.io.atomic`.
"""

from histoflow.errors import HistoflowError


class ExportError(HistoflowError):
    """An input cannot be exported as asked; the message names the sample, file or field."""
