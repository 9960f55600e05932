"""sha256 of files and folders: the one implementation every module uses.

`sha256_file` hashes every byte; `fast_sha256` hashes the size and both ends only,
for inputs too large to read in full on every run; `tree_digest` folds the hashes
of a folder's files into one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

CHUNK = 8 << 20
FAST_SPAN = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of every byte of a file, read in fixed-size blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def fast_sha256(path: str | os.PathLike, span: int = FAST_SPAN) -> str:
    """sha256 of the first and last `span` bytes and the size: O(1) in the file size.

    Catches a replaced or truncated file, not a change in the middle of it; for
    archives of multi-GB slides where a full hash costs minutes per slide.
    """
    size = os.path.getsize(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        digest.update(fh.read(span))
        if size > span:
            fh.seek(max(span, size - span))
            digest.update(fh.read(span))
    return digest.hexdigest()


def tree_digest(path: str | os.PathLike, hasher: Callable[[Path], str] = sha256_file) -> str:
    """One sha256 over the sorted (relative path, file hash) pairs of a folder."""
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(root).as_posix()}\0{hasher(file)}\n".encode())
    return digest.hexdigest()
