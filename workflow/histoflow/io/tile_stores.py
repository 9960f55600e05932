"""Streaming writers for per-tile predictions (tile-level models: classifiers, encoders).

All three formats share one layout, so a reader does not care which one it got:

| member | shape / type | content |
|---|---|---|
| `features` | (N, D) float32 | one vector per tile |
| `coords` | (N, 2) int64 | level-0 `x, y` of each tile's top-left corner |
| `tissue_ratio` | (N,) float32 | tissue fraction of each tile |
| `thumbnail` | (h, w, 3) uint8 | optional |
| `tissue_mask` | (h, w) uint8 | optional |
| `input_genes`, `output_genes` | (G,) str | optional |
| metadata | dict | Zarr/HDF5: root attribute `metadata` (JSON); NPZ: member `metadata` |

The HDF5 file is what CLAM and TRIDENT read (`coords` (N, 2), `features` (N, D)
float32); patch-geometry keys of the metadata (`patch_size`, `patch_level`, ...) are
copied onto `coords` as attributes, where those tools look for them.

Zarr and HDF5 preallocate N rows in `open` and receive rows in chunk-sized blocks
(a small buffer), so memory stays bounded; NPZ has no partial write, so it spills the
rows to temporary files next to the output and streams them into the archive on
`close` (memory stays bounded there too). Every writer writes to a temporary sibling and renames on
`close`; an exception inside `with writer:` leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from histoflow.io.atomic import atomic_output
from histoflow.io.npz import NpzFile

log = logging.getLogger(__name__)

# Metadata keys that CLAM / TRIDENT read from the attributes of `coords`.
COORDS_ATTRS = (
    "patch_size",
    "patch_level",
    "patch_size_level0",
    "level0_magnification",
    "target_magnification",
    "overlap",
    "name",
    # Resolution and slide size: TRIDENT-style mpp/width/height, CLAM's level_dim and
    # downsample ([x, y] arrays).
    "target_mpp",
    "level0_mpp",
    "level0_width",
    "level0_height",
    "level_dim",
    "downsample",
)


class OutputFormat(StrEnum):
    """The per-tile store formats, by their config name (`tiles.formats`)."""

    ZARR = "zarr"
    HDF5 = "hdf5"
    NPZ = "npz"

    @property
    def suffix(self) -> str:
        """The file suffix of the format."""
        return {"zarr": ".zarr", "hdf5": ".h5", "npz": ".npz"}[self.value]


@dataclass(frozen=True)
class TileResponse:
    """One tile's output."""

    vector: Any  # (D,) array-like
    coords: tuple[int, int]  # level-0 (x, y) of the tile's top-left corner
    tissue_ratio: float


def metadata_json(metadata: dict) -> str:
    """Canonical JSON (sorted keys) so reruns write identical bytes."""
    return json.dumps(metadata, sort_keys=True, separators=(",", ":"), allow_nan=False)


class PredictionWriter(ABC):
    """Base class: validation, row buffering and the atomic rename."""

    format: OutputFormat

    def __init__(self, path: str | Path, chunk_rows: int = 1024):
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be >= 1")
        self.path = Path(path)
        self.chunk_rows = chunk_rows
        self.num_tiles = 0
        self.embedding_dim = 0
        self.count = 0  # rows received
        self._flushed = 0  # rows handed to the backend
        self._stack: contextlib.ExitStack | None = None
        self._tmp: Path | None = None
        self.thumbnail: np.ndarray | None = None
        self.tissue_mask: np.ndarray | None = None
        self.metadata: dict = {}
        self.input_genes: list[str] | None = None
        self.output_genes: list[str] | None = None

    # -- public interface -------------------------------------------------------------
    def open(self, num_tiles: int, embedding_dim: int) -> PredictionWriter:
        """Start writing `num_tiles` rows of `embedding_dim` values; returns the writer."""
        if self._stack is not None:
            raise RuntimeError(f"{self.path}: writer already open")
        if num_tiles < 0 or embedding_dim < 1:
            raise ValueError(f"bad sizes: num_tiles={num_tiles}, embedding_dim={embedding_dim}")
        self.num_tiles, self.embedding_dim = int(num_tiles), int(embedding_dim)
        rows = max(1, min(self.chunk_rows, self.num_tiles))
        self._buf_features = np.zeros((rows, self.embedding_dim), np.float32)
        self._buf_coords = np.zeros((rows, 2), np.int64)
        self._buf_ratio = np.zeros(rows, np.float32)
        self._buffered = 0
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(atomic_output(self.path))
        try:
            self._open_backend()
        except BaseException:
            self.abort()
            raise
        return self

    def write(self, response: TileResponse) -> None:
        """Add the next tile's row."""
        if self._stack is None:
            raise RuntimeError(f"{self.path}: write() before open()")
        if self.count >= self.num_tiles:
            raise ValueError(f"{self.path}: more than num_tiles={self.num_tiles} rows written")
        vector = np.asarray(response.vector, dtype=np.float32).reshape(-1)
        if vector.shape[0] != self.embedding_dim:
            raise ValueError(
                f"{self.path}: vector of length {vector.shape[0]}, "
                f"expected embedding_dim={self.embedding_dim}"
            )
        i = self._buffered
        self._buf_features[i] = vector
        self._buf_coords[i] = np.asarray(response.coords, dtype=np.int64).reshape(2)
        self._buf_ratio[i] = response.tissue_ratio
        self._buffered += 1
        self.count += 1
        if self._buffered == self._buf_ratio.shape[0]:
            self._flush()

    def set_thumbnail(self, rgb) -> None:
        """Store an (h, w, 3) RGB thumbnail with the rows."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"thumbnail must be (h, w, 3), got {rgb.shape}")
        self.thumbnail = rgb.astype(np.uint8, copy=False)

    def set_tissue_mask(self, mask) -> None:
        """Store an (h, w) tissue mask with the rows."""
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise ValueError(f"tissue mask must be (h, w), got {mask.shape}")
        self.tissue_mask = mask.astype(np.uint8, copy=False)

    def set_metadata(self, metadata: dict) -> None:
        """The metadata to store (must be JSON-serialisable)."""
        metadata_json(metadata)  # fail now, not at close, if it is not JSON
        self.metadata = dict(metadata)

    def set_gene_names(self, input_genes=None, output_genes=None) -> None:  # noqa: B027 - optional hook
        """No-op by default (a writer may ignore them); the three writers here store them."""

    def close(self) -> None:
        """Write everything and rename the store onto its path."""
        if self._stack is None:
            raise RuntimeError(f"{self.path}: close() before open()")
        try:
            self._flush()
            if self.count != self.num_tiles:
                log.warning(
                    "%s: %d of %d tiles written; truncating", self.path, self.count, self.num_tiles
                )
            self._close_backend()
        except BaseException:
            self.abort()
            raise
        stack, self._stack = self._stack, None
        stack.close()  # renames the temporary onto self.path

    def abort(self) -> None:
        """Drop everything written so far."""
        if self._stack is None:
            return
        stack, self._stack = self._stack, None
        with contextlib.suppress(BaseException):
            self._abort_backend()
        with contextlib.suppress(_Aborted):
            stack.__exit__(_Aborted, _Aborted(), None)

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._stack is None:
            return
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- backends -------------------------------------------------------------------
    def _flush(self) -> None:
        n = self._buffered
        if n:
            self._write_rows(
                self._flushed, self._buf_features[:n], self._buf_coords[:n], self._buf_ratio[:n]
            )
            self._flushed += n
            self._buffered = 0

    def _genes(self) -> dict[str, list[str]]:
        genes = {"input_genes": self.input_genes, "output_genes": self.output_genes}
        return {k: v for k, v in genes.items() if v is not None}

    def _store_gene_names(self, input_genes, output_genes) -> None:
        for attr, names in (("input_genes", input_genes), ("output_genes", output_genes)):
            if names is not None:
                setattr(self, attr, [str(n) for n in names])

    @abstractmethod
    def _open_backend(self) -> None: ...

    @abstractmethod
    def _write_rows(self, start: int, features, coords, ratio) -> None: ...

    @abstractmethod
    def _close_backend(self) -> None: ...

    def _abort_backend(self) -> None:  # noqa: B027 - optional hook
        pass


class _Aborted(Exception):
    pass


class _GeneStoringWriter(PredictionWriter):
    """A writer that keeps the gene names (the three formats here all do)."""

    def set_gene_names(self, input_genes=None, output_genes=None) -> None:
        """Store the gene IDs of an expression model's input and output values."""
        self._store_gene_names(input_genes, output_genes)


class _ArrayRowsWriter(_GeneStoringWriter):
    """A writer whose backend holds preallocated `features`, `coords`, `tissue_ratio` arrays."""

    _features: Any
    _coords: Any
    _ratio: Any

    def _write_rows(self, start, features, coords, ratio) -> None:
        stop = start + len(ratio)
        self._features[start:stop] = features
        self._coords[start:stop] = coords
        self._ratio[start:stop] = ratio


class ZarrWriter(_ArrayRowsWriter):
    """Rows into a Zarr v3 group; metadata in its attributes."""

    format = OutputFormat.ZARR

    def _open_backend(self) -> None:
        import zarr

        n, d = self.num_tiles, self.embedding_dim
        rows = max(1, min(self.chunk_rows, n))
        self._group = zarr.create_group(store=str(self._tmp), zarr_format=3)
        self._features = self._group.create_array(
            "features", shape=(n, d), chunks=(rows, d), dtype="float32", fill_value=0
        )
        self._coords = self._group.create_array(
            "coords", shape=(n, 2), chunks=(rows, 2), dtype="int64", fill_value=0
        )
        self._ratio = self._group.create_array(
            "tissue_ratio", shape=(n,), chunks=(rows,), dtype="float32", fill_value=0
        )

    def _close_backend(self) -> None:
        if self.count != self.num_tiles:
            self._features.resize((self.count, self.embedding_dim))
            self._coords.resize((self.count, 2))
            self._ratio.resize((self.count,))
        if self.thumbnail is not None:
            self._group.create_array("thumbnail", data=self.thumbnail)
        if self.tissue_mask is not None:
            self._group.create_array("tissue_mask", data=self.tissue_mask)
        for name, genes in self._genes().items():
            # dtype=str is zarr's variable-length "string" type, which has a v3 spec
            # (a fixed-width numpy unicode dtype does not).
            arr = self._group.create_array(name, shape=(len(genes),), dtype=str)
            if genes:
                arr[:] = np.array(genes, dtype=str)
        self._group.attrs.update(
            {
                "metadata": json.loads(metadata_json(self.metadata)),
                "num_tiles": self.count,
                "embedding_dim": self.embedding_dim,
            }
        )


class HDF5Writer(_ArrayRowsWriter):
    """Rows into an HDF5 file as CLAM and TRIDENT read it."""

    format = OutputFormat.HDF5

    def _open_backend(self) -> None:
        import h5py

        n, d = self.num_tiles, self.embedding_dim
        rows = max(1, min(self.chunk_rows, n))
        self._file = h5py.File(self._tmp, "w")
        opts = dict(compression="gzip", compression_opts=4, shuffle=True, track_times=False)
        self._features = self._file.create_dataset(
            "features", (n, d), "float32", chunks=(rows, d), maxshape=(None, d), **opts
        )
        self._coords = self._file.create_dataset(
            "coords", (n, 2), "int64", chunks=(rows, 2), maxshape=(None, 2), **opts
        )
        self._ratio = self._file.create_dataset(
            "tissue_ratio", (n,), "float32", chunks=(rows,), maxshape=(None,), **opts
        )

    def _close_backend(self) -> None:
        import h5py

        f = self._file
        if self.count != self.num_tiles:
            for ds in (self._features, self._coords, self._ratio):
                ds.resize(self.count, axis=0)
        opts = dict(compression="gzip", compression_opts=4, track_times=False)
        if self.thumbnail is not None:
            f.create_dataset("thumbnail", data=self.thumbnail, **opts)
        if self.tissue_mask is not None:
            f.create_dataset("tissue_mask", data=self.tissue_mask, **opts)
        for name, genes in self._genes().items():
            f.create_dataset(name, data=genes, dtype=h5py.string_dtype(), track_times=False)
        f.attrs["metadata"] = metadata_json(self.metadata)
        f.attrs["num_tiles"] = self.count
        f.attrs["embedding_dim"] = self.embedding_dim
        for key in COORDS_ATTRS:
            value = self.metadata.get(key)
            if isinstance(value, bool | int | float | str):
                self._coords.attrs[key] = value
            elif (
                isinstance(value, list | tuple)
                and value
                and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
            ):
                self._coords.attrs[key] = np.asarray(value)
        f.close()

    def _abort_backend(self) -> None:
        self._file.close()


class NPZWriter(_GeneStoringWriter):
    """Rows into a deterministic `.npz`, spilled to disk until `close`."""

    format = OutputFormat.NPZ

    def _open_backend(self) -> None:
        # Rows go to raw spill files, not memory: 100k tiles x 1024 floats would be 400 MB.
        # The folder is named after the temporary sibling, so the next writer of this
        # store removes it when a killed job left it (histoflow.io.atomic).
        self._spill_dir = Path(f"{self._tmp}.spill")
        shutil.rmtree(self._spill_dir, ignore_errors=True)
        self._spill_dir.mkdir()
        spill = self._spill_dir
        names = ("features", "coords", "ratio")
        self._spills = [open(spill / n, "wb") for n in names]  # noqa: SIM115 - closed in close/abort

    def _write_rows(self, _start, features, coords, ratio) -> None:
        for fh, rows in zip(self._spills, (features, coords, ratio)):
            fh.write(np.ascontiguousarray(rows).tobytes())

    def _close_backend(self) -> None:
        for fh in self._spills:
            fh.close()
        n, d = self.count, self.embedding_dim
        spill = self._spill_dir

        def blocks(name, dtype, width):
            with open(spill / name, "rb") as fh:
                while chunk := fh.read(self.chunk_rows * width * np.dtype(dtype).itemsize):
                    yield np.frombuffer(chunk, dtype)

        try:
            with NpzFile(self._tmp) as npz:
                npz.add_streamed("features", (n, d), np.float32, blocks("features", np.float32, d))
                npz.add_streamed("coords", (n, 2), np.int64, blocks("coords", np.int64, 2))
                npz.add_streamed("tissue_ratio", (n,), np.float32, blocks("ratio", np.float32, 1))
                if self.thumbnail is not None:
                    npz.add("thumbnail", self.thumbnail)
                if self.tissue_mask is not None:
                    npz.add("tissue_mask", self.tissue_mask)
                for name, genes in self._genes().items():
                    npz.add(name, np.array(genes, dtype=str))
                npz.add("metadata", np.array(metadata_json(self.metadata)))
        finally:
            shutil.rmtree(self._spill_dir, ignore_errors=True)

    def _abort_backend(self) -> None:
        for fh in self._spills:
            fh.close()
        shutil.rmtree(self._spill_dir, ignore_errors=True)


WRITERS: dict[OutputFormat, type[PredictionWriter]] = {
    OutputFormat.ZARR: ZarrWriter,
    OutputFormat.HDF5: HDF5Writer,
    OutputFormat.NPZ: NPZWriter,
}


def create_writer(fmt: OutputFormat | str, path: str | Path, **kwargs) -> PredictionWriter:
    """A writer for `fmt` ('zarr', 'hdf5', 'npz' or an OutputFormat) at `path`."""
    try:
        fmt = OutputFormat(fmt)
    except ValueError:
        known = ", ".join(f.value for f in OutputFormat)
        raise ValueError(f"unknown output format '{fmt}' (known: {known})") from None
    return WRITERS[fmt](path, **kwargs)
