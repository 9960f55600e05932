"""Deterministic, streamable `.npz` files.

`numpy.savez_compressed` stamps each member with the current time, so two runs differ
in bytes; this writer uses a fixed zip timestamp and can stream an array into its
member band by band, so nothing needs the whole array in memory.
"""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

# The earliest time a zip header can hold: fixed, so reruns give identical bytes.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


class NpzFile(contextlib.AbstractContextManager):
    """Write members of an `.npz` (a zip of `.npy` files) that `numpy.load` reads."""

    def __init__(self, path: str | Path):
        self._zip = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED)

    def _member(self, name: str):
        info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_EPOCH)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        return self._zip.open(info, "w", force_zip64=True)

    def add(self, name: str, array) -> None:
        """Write `array` whole as the member `name`."""
        array = np.asarray(array)
        if array.dtype.hasobject:
            raise TypeError(f"npz member '{name}': object arrays would need pickle")
        with self._member(name) as fh:
            np.lib.format.write_array(fh, array, allow_pickle=False)

    def add_streamed(
        self, name: str, shape: tuple[int, ...], dtype, blocks: Iterable[np.ndarray]
    ) -> None:
        """Write a C-order array from consecutive blocks along its first axis."""
        dtype = np.dtype(dtype)
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False}
        header["shape"] = tuple(int(s) for s in shape)
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        written = 0
        with self._member(name) as fh:
            np.lib.format.write_array_header_1_0(fh, header)
            for block in blocks:
                data = np.ascontiguousarray(block, dtype=dtype)
                fh.write(data.tobytes())
                written += data.nbytes
        if written != expected:
            raise ValueError(f"npz member '{name}': wrote {written} bytes, expected {expected}")

    def close(self) -> None:
        """Finish the zip file."""
        self._zip.close()

    def __exit__(self, *exc) -> None:
        self.close()
