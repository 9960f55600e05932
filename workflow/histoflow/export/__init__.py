"""Export stage: the outputs of earlier stages in formats that other tools open.

One module per concern: `writers` (streaming per-tile prediction writers), `dense`
(slide-scale maps to Zarr/HDF5/NPZ), `ometiff` (pyramidal heatmaps), `instances`
(reading the instance table), `geojson`, `sqlite_store`, `tables` (per-object TSV) and
`summary` (per-slide TSV). Every writer goes through `histoflow.io.atomic`.
"""

from histoflow.errors import HistoflowError


class ExportError(HistoflowError):
    """An input cannot be exported as asked; the message names the sample, file or field."""
