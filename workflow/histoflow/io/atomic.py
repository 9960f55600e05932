"""Atomic outputs: a file or directory store appears at its final path only when complete."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def temporary_sibling(final: str | os.PathLike) -> Path:
    """A hidden path next to `final`, on the same filesystem so the rename is atomic."""
    final = Path(final)
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_output(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path to write; rename it onto `final` on success.

    Works for files and for directory stores (Zarr). On any exception the temporary
    is removed and `final` is left untouched, so nothing half-written looks complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(final)
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if final.exists() and final.is_dir() and not final.is_symlink():
        # os.replace cannot overwrite a non-empty directory.
        shutil.rmtree(final)
    os.replace(tmp, final)
