"""`infer/raw.zarr` (workflow/CONTRACTS.md): per-patch model outputs; its one writer
and its one reader.

`RawZarrWriter` builds the store in a hidden sibling directory (`.raw.zarr.partial`)
and renames it onto its final path only when complete. Patches are buffered and
written one whole chunk (`chunk_patches` patches) at a time; after each chunk the
`written` attribute records how many patches are safely on disk, so a killed job can
resume from there when the run's fingerprint (grid, model, options, the slide's size and
content hash) and `resume_key` (the slide's whole identity, path and mtime included:
histoflow.manifest.fingerprint.identity) are unchanged, so a resume never mixes two
slides; `resume_key` is dropped from the complete store. With
`background=True` chunks are compressed and written by one thread while the next
batches compute; at most two chunks wait in its queue, so memory stays bounded.

`open_raw` validates a finished store and reads head outputs lazily, a slice of
patches at a time; `BatchReader` walks them grid row by grid row. `read_raw_attrs`
reads only the attributes, for rule resources.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from histoflow.errors import HistoflowError
from histoflow.io.atomic import kill_point
from histoflow.io.space import require_free_space
from histoflow.io.zarr_attrs import read_group_attrs

log = logging.getLogger(__name__)

# raw.zarr is an intermediate read once by merge_patches: LZ4 with byte shuffle trades
# some size for write speed; Blosc's blocks do not depend on its thread count, so the
# bytes stay deterministic.
CODEC = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


class RawZarrError(HistoflowError):
    """raw.zarr breaks the contract; the message names the file and the member."""


def partial_path(final: str | os.PathLike) -> Path:
    """The hidden sibling where the store at `final` is built (and resumed from)."""
    final = Path(final)
    return final.with_name(f".{final.name}.partial")


# Keys of an input's identity that say where and when, not what: in the partial store's
# `resume_key` only, so a complete store does not depend on the slide's path or mtime.
WHERE_WHEN = ("path", "mtime_ns")


def _content(value):
    if isinstance(value, dict):
        return {k: _content(v) for k, v in value.items() if k not in WHERE_WHEN}
    return value


def _digest(record) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def _fingerprint(
    boxes: np.ndarray, attrs: dict, dtype: str, chunk: int, inputs: dict | None
) -> str:
    record = {"attrs": attrs, "dtype": dtype, "chunk": chunk, "inputs": _content(inputs)}
    digest = hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode())
    digest.update(np.ascontiguousarray(boxes, np.int64).tobytes())
    return digest.hexdigest()


class RawZarrWriter:
    """Streams per-patch head outputs into a Zarr v3 group, then publishes it atomically."""

    def __init__(
        self,
        final: str | os.PathLike,
        boxes: np.ndarray,
        grid: np.ndarray,
        heads: list[dict],
        patch_output: tuple[int, int],
        attrs: dict,
        dtype: str = "float16",
        chunk_patches: int = 64,
        resume: bool = True,
        background: bool = False,
        inputs: dict | None = None,
    ):
        self.final = Path(final)
        self.path = partial_path(final)
        self.n = len(boxes)
        self.chunk = max(1, int(chunk_patches))
        self.heads = heads
        fingerprint = _fingerprint(boxes, attrs, dtype, self.chunk, inputs)
        self.resume_key = _digest(inputs)
        self.written = 0
        if resume and self.path.exists():
            self.written = self._resume_point(fingerprint)
        per_patch = np.dtype(dtype).itemsize * int(np.prod(patch_output))
        require_free_space(
            self.path,
            (self.n - self.written) * per_patch * sum(int(h["channels"]) for h in heads),
            sample=attrs.get("sample"),
            what="raw.zarr",
            compressed=True,
        )
        if self.written == 0:
            self._create(boxes, grid, heads, patch_output, attrs, dtype, fingerprint)
        self.group = zarr.open_group(str(self.path), mode="r+")
        self.arrays = {h["name"]: self.group["heads"][h["name"]] for h in heads}
        self._buffer: dict[str, list[np.ndarray]] = {h["name"]: [] for h in heads}
        self._buffered = 0
        self._queued = self.written  # patches handed to _flush (written or waiting)
        self._error: BaseException | None = None
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        if background:
            self._queue = queue.Queue(maxsize=2)
            self._thread = threading.Thread(target=self._drain, name="raw-store", daemon=True)
            self._thread.start()

    def _resume_point(self, fingerprint: str) -> int:
        try:
            group = zarr.open_group(str(self.path), mode="r")
            same = group.attrs.get("fingerprint") == fingerprint
            if same and group.attrs.get("resume_key") == self.resume_key:
                written = int(group.attrs.get("written", 0))
                log.info(
                    "resuming %s: %d of %d patches already written", self.final, written, self.n
                )
                return written
            log.info("discarding partial %s: written by a run with other settings", self.path)
        except Exception as exc:  # unreadable leftovers of a killed job: start afresh
            log.info("discarding unreadable partial %s (%s)", self.path, exc)
        return 0

    def _create(self, boxes, grid, heads, patch_output, attrs, dtype, fingerprint) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        group = zarr.open_group(str(self.path), mode="w")
        group.create_array("boxes", data=np.asarray(boxes, np.int64), chunks=(max(self.n, 1), 4))
        group.create_array("grid", data=np.asarray(grid, np.int64), chunks=(max(self.n, 1), 2))
        hg = group.create_group("heads")
        oh, ow = patch_output
        for head in heads:
            hg.create_array(
                head["name"],
                shape=(self.n, oh, ow, head["channels"]),
                chunks=(self.chunk, oh, ow, head["channels"]),
                dtype=dtype,
                fill_value=0,
                compressors=CODEC,
            )
        group.attrs.update(
            {**attrs, "fingerprint": fingerprint, "resume_key": self.resume_key, "written": 0}
        )

    @property
    def remaining(self) -> int:
        """Patches still to append (all of them unless resuming)."""
        return self.n - self.written

    def _check_batch(self, outputs: dict[str, np.ndarray]) -> int:
        if outputs.keys() != self._buffer.keys():
            raise ValueError(
                f"raw store {self.final}: batch has heads {sorted(outputs)}, "
                f"expected {sorted(self._buffer)}"
            )
        counts = {len(arr) for arr in outputs.values()}
        count = counts.pop()
        if counts:
            raise ValueError(f"raw store {self.final}: heads of one batch differ in length")
        for name, arr in outputs.items():
            # zarr 3 silently crops or pads a block of the wrong shape; refuse it here.
            want = self.arrays[name].shape[1:]
            if arr.shape[1:] != want:
                raise ValueError(
                    f"raw store {self.final}: head '{name}' patches have shape "
                    f"{arr.shape[1:]}, expected {want}"
                )
        if self._queued + self._buffered + count > self.n:
            raise ValueError(f"raw store {self.final}: more patches than the {self.n} boxes")
        return count

    def append(self, outputs: dict[str, np.ndarray]) -> None:
        """Add a batch (head -> (B, h, w, C)); whole chunks are flushed as they fill."""
        self._raise_if_failed()
        count = self._check_batch(outputs)
        for name, arr in outputs.items():
            self._buffer[name].append(arr)
        self._buffered += count
        while self._buffered >= self.chunk or (
            self._buffered and self._queued + self._buffered >= self.n
        ):
            self._flush(min(self.chunk, self._buffered))

    def _flush(self, count: int) -> None:
        start = self._queued
        blocks = {}
        for name, parts in self._buffer.items():
            block = np.concatenate(parts) if len(parts) > 1 else parts[0]
            blocks[name] = block[:count]
            rest = block[count:]
            self._buffer[name] = [rest] if len(rest) else []
        self._buffered -= count
        self._queued = start + count
        if self._queue is None:
            self._write(start, count, blocks)
        else:
            self._queue.put((start, count, blocks))

    def _write(self, start: int, count: int, blocks: dict[str, np.ndarray]) -> None:
        for name, block in blocks.items():
            self.arrays[name][start : start + count] = block
        self.written = start + count
        # Only after the chunk's data is on disk: a kill between the two loses the chunk,
        # never records data that is not there.
        self.group.attrs["written"] = self.written
        kill_point(self.final.name)  # test hook: a kill part way (io/atomic.py)

    def _drain(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:  # after a failure, only empty the queue
                try:
                    self._write(*item)
                except BaseException as exc:  # handed to the main thread
                    self._error = exc

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def abort(self) -> None:
        """Stop the writer thread, keeping the chunks already written (for a resume)."""
        self._stop()

    def close(self) -> Path:
        """Wait for the last chunk, check every patch is written and publish the store."""
        self._stop()
        self._raise_if_failed()
        if self.written != self.n:
            raise RuntimeError(
                f"raw store {self.final}: {self.written} of {self.n} patches written"
            )
        self.group.attrs.update({"written": self.n})
        del self.group.attrs["resume_key"]  # where and when: the partial store's only
        if self.final.exists():
            shutil.rmtree(self.final)
        os.replace(self.path, self.final)
        return self.final


@dataclass(frozen=True)
class PatchRow:
    """The kept patches of one grid row: indices [start, stop) into the raw arrays."""

    row: int
    start: int
    stop: int


class RawZarr:
    """Validated view of a raw.zarr group. Boxes and grid are small and held in memory;
    head outputs are read lazily, a slice of patches at a time."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.group = zarr.open_group(self.path, mode="r")
        except (OSError, ValueError, KeyError, TypeError) as exc:  # missing, or broken metadata
            raise RawZarrError(f"file '{self.path}': cannot open as a Zarr group ({exc})") from exc
        self.attrs = dict(self.group.attrs)
        self.shape = self._slide_shape()
        self.head_names = [str(h["name"]) for h in self.attrs["heads"]]
        self.boxes = self._read_int("boxes", 4)
        self.grid = self._read_int("grid", 2)
        if len(self.grid) != len(self.boxes):
            raise RawZarrError(
                f"file '{self.path}': 'grid' has {len(self.grid)} rows, 'boxes' {len(self.boxes)}"
            )
        self.heads = {name: self._head(name) for name in self.head_names}
        self.channels = {name: int(arr.shape[3]) for name, arr in self.heads.items()}
        self.patch_shape = self._patch_shape()
        self._check_boxes()
        self.rows = self._row_groups()

    def __len__(self) -> int:
        """Number of patches."""
        return len(self.boxes)

    def _error(self, message: str) -> RawZarrError:
        return RawZarrError(f"file '{self.path}': {message}")

    def _slide_shape(self) -> tuple[int, int]:
        for key in ("shape", "heads"):
            if key not in self.attrs:
                raise self._error(f"attribute '{key}' missing")
        height, width = (int(v) for v in self.attrs["shape"])
        if height <= 0 or width <= 0:
            raise self._error("attribute 'shape' must be positive")
        return height, width

    def _head(self, name: str) -> zarr.Array:
        key = f"heads/{name}"
        if key not in self.group:
            raise self._error(f"member '{key}' missing")
        arr = self.group[key]
        n = len(self.boxes)
        if arr.ndim != 4 or arr.shape[0] != n:
            raise self._error(f"'{key}' has shape {arr.shape}, expected (N={n}, h, w, C)")
        return arr

    def _read_int(self, name: str, width: int) -> np.ndarray:
        if name not in self.group:
            raise self._error(f"member '{name}' missing")
        arr = np.asarray(self.group[name][...])
        if arr.ndim != 2 or arr.shape[1] != width or not np.issubdtype(arr.dtype, np.integer):
            raise self._error(
                f"'{name}' must be (N, {width}) integers, got {arr.dtype} {arr.shape}"
            )
        return arr.astype(np.int64, copy=False)

    def _patch_shape(self) -> tuple[int, int]:
        shapes = {tuple(a.shape[1:3]) for a in self.heads.values()}
        if len(shapes) > 1:
            raise self._error(f"heads differ in patch size {sorted(shapes)}")
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
            raise self._error(
                f"box {i} {self.boxes[i].tolist()} is not the patch size {h}x{w} of the head arrays"
            )

    def _row_groups(self) -> list[PatchRow]:
        rows = self.grid[:, 0]
        if len(rows) > 1 and (np.diff(rows) < 0).any():
            i = int(np.flatnonzero(np.diff(rows) < 0)[0]) + 1
            raise self._error(
                f"patches are not in row-major order (patch {i} has grid row {int(rows[i])} "
                f"after row {int(rows[i - 1])})"
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


def open_raw(path: str | Path) -> RawZarr:
    """Open and validate raw.zarr at `path`; `RawZarrError` names the file when it breaks
    the contract."""
    return RawZarr(path)


class BatchReader:
    """Head outputs of each grid row (`rows`, default all of raw's) in batches of at most
    `batch` patches, cut at raw.zarr's chunk edges so no batch decodes a chunk twice.
    With `prefetch`, the next batch (possibly of the next row) is decoded in a background
    thread while the current one is merged; at most one batch is read ahead."""

    def __init__(
        self,
        raw: RawZarr,
        batch: int,
        prefetch: bool = False,
        rows: list[PatchRow] | None = None,
    ):
        self.raw = raw
        chunk = min((int(a.chunks[0]) for a in raw.heads.values()), default=batch) or batch
        self.ranges = []
        for row in raw.rows if rows is None else rows:
            a = row.start
            while a < row.stop:
                b = min(row.stop, a + batch, (a // chunk + 1) * chunk)
                self.ranges.append((a, b))
                a = b
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
        """(first patch index, head outputs) of each batch of the grid row `row`."""
        a = row.start
        while a < row.stop:
            k = self.index[a]
            yield a, self._get(k)
            a = self.ranges[k][1]

    def close(self) -> None:
        """Stop the read-ahead thread and drop what it read."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        self.pending.clear()


def read_raw_attrs(path: str | Path) -> dict | None:
    """raw.zarr's attributes without opening its arrays; None when `path` does not exist.

    A store that exists but cannot be read raises `RawZarrError` naming the file.
    """
    return read_group_attrs(path, RawZarrError)
