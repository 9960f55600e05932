"""raw.zarr: per-patch model outputs, written chunk by chunk (see workflow/CONTRACTS.md).

The store is built in a hidden sibling directory (`.raw.zarr.partial`) and renamed
onto its final path only when complete. Patches are buffered and written one whole
chunk (`chunk_patches` patches) at a time; after each chunk the `written` attribute
records how many patches are safely on disk, so a killed job can resume from there
when the run's fingerprint (grid, model, options) is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import zarr

log = logging.getLogger(__name__)


def partial_path(final: str | os.PathLike) -> Path:
    final = Path(final)
    return final.with_name(f".{final.name}.partial")


class RawStoreWriter:
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
    ):
        self.final = Path(final)
        self.path = partial_path(final)
        self.n = len(boxes)
        self.chunk = max(1, int(chunk_patches))
        self.heads = heads
        digest = hashlib.sha256(
            json.dumps(
                {"attrs": attrs, "dtype": dtype, "chunk": self.chunk}, sort_keys=True
            ).encode()
        )
        digest.update(np.ascontiguousarray(boxes, np.int64).tobytes())
        fingerprint = digest.hexdigest()
        self.written = 0
        if resume and self.path.exists():
            self.written = self._resume_point(fingerprint)
        if self.written == 0:
            self._create(boxes, grid, heads, patch_output, attrs, dtype, fingerprint)
        self.group = zarr.open_group(str(self.path), mode="r+")
        self.arrays = {h["name"]: self.group["heads"][h["name"]] for h in heads}
        self._buffer: dict[str, list[np.ndarray]] = {h["name"]: [] for h in heads}
        self._buffered = 0

    def _resume_point(self, fingerprint: str) -> int:
        try:
            group = zarr.open_group(str(self.path), mode="r")
            if group.attrs.get("fingerprint") == fingerprint:
                written = int(group.attrs.get("written", 0))
                log.info(
                    "resuming %s: %d of %d patches already written", self.final, written, self.n
                )
                return written
            log.info("discarding partial %s: written by a run with other settings", self.path)
        except Exception as exc:  # unreadable leftovers of a killed job
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
            )
        group.attrs.update({**attrs, "fingerprint": fingerprint, "written": 0})

    @property
    def remaining(self) -> int:
        return self.n - self.written

    def append(self, outputs: dict[str, np.ndarray]) -> None:
        """Add a batch (head -> (B, h, w, C)); whole chunks are flushed as they fill."""
        count = None
        for name, arr in outputs.items():
            self._buffer[name].append(arr)
            count = len(arr)
        self._buffered += count or 0
        while self._buffered >= self.chunk or (
            self._buffered and self.written + self._buffered >= self.n
        ):
            self._flush(min(self.chunk, self._buffered))

    def _flush(self, count: int) -> None:
        start = self.written
        for name, parts in self._buffer.items():
            block = np.concatenate(parts) if len(parts) > 1 else parts[0]
            self.arrays[name][start : start + count] = block[:count]
            rest = block[count:]
            self._buffer[name] = [rest] if len(rest) else []
        self._buffered -= count
        self.written = start + count
        # Only after the chunk's data is on disk: a kill between the two loses the chunk,
        # never records data that is not there.
        self.group.attrs["written"] = self.written

    def close(self) -> Path:
        if self.written != self.n:
            raise RuntimeError(
                f"raw store {self.final}: {self.written} of {self.n} patches written"
            )
        self.group.attrs.update({"written": self.n})
        if self.final.exists():
            shutil.rmtree(self.final)
        os.replace(self.path, self.final)
        return self.final


def open_raw(path: str | os.PathLike) -> zarr.Group:
    return zarr.open_group(str(path), mode="r")
