"""Free-space checks before writes whose size is known in advance: a job that cannot
fit refuses at once, with one line naming the sample, the path and the free space,
instead of dying half way (ENOSPC, or SIGBUS on a memory-mapped file).

Uncompressed writes (spill canvases, OME-TIFF level files) need their exact size.
Compressed stores (raw.zarr, maps.zarr) need at least their raw size divided by
MAX_COMPRESSION: a bound the codec is not expected to beat on model outputs, so a store
that would fit is never refused; one that fails the check cannot fit.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from histoflow.errors import HistoflowError

MB = 1024 * 1024
MAX_COMPRESSION = 8


class DiskSpaceError(HistoflowError):
    """Not enough free space for a write; the message names sample, path and free space."""


def _existing(path: Path) -> Path:
    """`path` or its nearest existing parent (the filesystem the write lands on)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes on the filesystem that holds (or will hold) `path`."""
    return shutil.disk_usage(_existing(Path(path))).free


def require_free_space(
    path: str | os.PathLike,
    nbytes: int,
    *,
    sample: str | None,
    what: str,
    compressed: bool = False,
) -> None:
    """Raise DiskSpaceError when `what` (`nbytes` raw) cannot fit where `path` goes."""
    need = -(-int(nbytes) // MAX_COMPRESSION) if compressed else int(nbytes)
    if need <= 0:
        return
    free = free_bytes(path)
    if free >= need:
        return
    at_least = "at least " if compressed else ""
    raise DiskSpaceError(
        f"sample '{sample or '?'}': {what} at '{path}' needs {at_least}{need / MB:.1f} MB, "
        f"only {free / MB:.1f} MB free there; free space on that disk or write elsewhere"
    )
