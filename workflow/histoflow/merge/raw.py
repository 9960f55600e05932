"""Reading `results/{sample}/infer/raw.zarr` (see workflow/CONTRACTS.md)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from histoflow.errors import HistoflowError


class RawStoreError(HistoflowError):
    """raw.zarr breaks the contract; the message names the file and the member."""


@dataclass(frozen=True)
class PatchRow:
    """The kept patches of one grid row: indices [start, stop) into the raw arrays."""

    row: int
    start: int
    stop: int


class RawPatches:
    """Validated view of a raw.zarr group. Boxes and grid are small and held in memory;
    head outputs are read lazily, a slice of patches at a time."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.group = zarr.open_group(self.path, mode="r")
        except Exception as exc:  # zarr raises several types for a missing/broken store
            raise RawStoreError(f"file '{self.path}': cannot open as a Zarr group ({exc})") from exc
        self.attrs = dict(self.group.attrs)
        for key in ("shape", "heads"):
            if key not in self.attrs:
                raise RawStoreError(f"file '{self.path}': attribute '{key}' missing")
        height, width = (int(v) for v in self.attrs["shape"])
        if height <= 0 or width <= 0:
            raise RawStoreError(f"file '{self.path}': attribute 'shape' must be positive")
        self.shape = (height, width)
        self.head_names = [str(h["name"]) for h in self.attrs["heads"]]
        self.boxes = self._read_int("boxes", 4)
        self.grid = self._read_int("grid", 2)
        n = len(self.boxes)
        if len(self.grid) != n:
            raise RawStoreError(
                f"file '{self.path}': 'grid' has {len(self.grid)} rows, 'boxes' {n}"
            )
        self.heads = {}
        self.channels = {}
        for name in self.head_names:
            key = f"heads/{name}"
            if key not in self.group:
                raise RawStoreError(f"file '{self.path}': member '{key}' missing")
            arr = self.group[key]
            if arr.ndim != 4 or arr.shape[0] != n:
                raise RawStoreError(
                    f"file '{self.path}': '{key}' has shape {arr.shape}, expected (N={n}, h, w, C)"
                )
            self.heads[name] = arr
            self.channels[name] = int(arr.shape[3])
        self.patch_shape = self._patch_shape()
        self._check_boxes()
        self.rows = self._row_groups()

    def __len__(self) -> int:
        return len(self.boxes)

    def _read_int(self, name: str, width: int) -> np.ndarray:
        if name not in self.group:
            raise RawStoreError(f"file '{self.path}': member '{name}' missing")
        arr = np.asarray(self.group[name][...])
        if arr.ndim != 2 or arr.shape[1] != width or not np.issubdtype(arr.dtype, np.integer):
            raise RawStoreError(
                f"file '{self.path}': '{name}' must be (N, {width}) integers, got {arr.dtype} "
                f"{arr.shape}"
            )
        return arr.astype(np.int64, copy=False)

    def _patch_shape(self) -> tuple[int, int]:
        shapes = {tuple(a.shape[1:3]) for a in self.heads.values()}
        if len(shapes) > 1:
            raise RawStoreError(f"file '{self.path}': heads differ in patch size {sorted(shapes)}")
        if shapes:
            return shapes.pop()
        return tuple(int(v) for v in self.attrs.get("patch_output", (0, 0)))

    def _check_boxes(self) -> None:
        if not len(self.boxes):
            return
        h, w = self.patch_shape
        sizes = np.stack(
            [self.boxes[:, 3] - self.boxes[:, 1], self.boxes[:, 2] - self.boxes[:, 0]], axis=1
        )
        bad = np.flatnonzero((sizes != (h, w)).any(axis=1))
        if len(bad):
            i = int(bad[0])
            raise RawStoreError(
                f"file '{self.path}': box {i} {self.boxes[i].tolist()} is not the patch size "
                f"{h}x{w} of the head arrays"
            )

    def _row_groups(self) -> list[PatchRow]:
        rows = self.grid[:, 0]
        if len(rows) > 1 and (np.diff(rows) < 0).any():
            i = int(np.flatnonzero(np.diff(rows) < 0)[0]) + 1
            raise RawStoreError(
                f"file '{self.path}': patches are not in row-major order (patch {i} has grid row "
                f"{int(rows[i])} after row {int(rows[i - 1])})"
            )
        starts = np.concatenate([[0], np.flatnonzero(np.diff(rows)) + 1]).astype(int)
        stops = np.concatenate([starts[1:], [len(rows)]]).astype(int)
        if not len(rows):
            return []
        return [PatchRow(int(rows[a]), int(a), int(b)) for a, b in zip(starts, stops, strict=True)]

    def clipped_boxes(self) -> np.ndarray:
        """Boxes clipped to the slide, (N, 4) x0, y0, x1, y1; empty boxes have x0 >= x1."""
        height, width = self.shape
        out = self.boxes.copy()
        out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, width)
        out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, height)
        return out

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Head outputs of patches [start, stop) as (k, h, w, C) arrays, in the stored dtype."""
        return {name: np.asarray(arr[start:stop]) for name, arr in self.heads.items()}


class BatchReader:
    """Head outputs of each grid row in batches of at most `batch` patches. With
    `prefetch`, the next batch (possibly of the next row) is decoded in a background
    thread while the current one is merged; at most one batch is read ahead."""

    def __init__(self, raw: RawPatches, batch: int, prefetch: bool = False):
        self.raw = raw
        self.ranges = [
            (a, min(a + batch, row.stop))
            for row in raw.rows
            for a in range(row.start, row.stop, batch)
        ]
        self.index = {a: k for k, (a, _) in enumerate(self.ranges)}
        self.batch = batch
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="raw-reader") if prefetch else None
        self.pending: dict[int, Future] = {}

    def _get(self, k: int) -> dict[str, np.ndarray]:
        nxt = k + 1
        if self.pool is not None and nxt < len(self.ranges) and nxt not in self.pending:
            self.pending[nxt] = self.pool.submit(self.raw.read, *self.ranges[nxt])
        future = self.pending.pop(k, None)
        return future.result() if future is not None else self.raw.read(*self.ranges[k])

    def row(self, row: PatchRow) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        for a in range(row.start, row.stop, self.batch):
            yield a, self._get(self.index[a])

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        self.pending.clear()
