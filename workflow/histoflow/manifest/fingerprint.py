"""Fingerprints of the input files of a slide: size and sha256, so a changed input shows."""

from __future__ import annotations

import copy
import functools
import os
import stat
from pathlib import Path

from histoflow.hashing import fast_sha256, sha256_file, tree_digest

# Fingerprint method -> file hasher: `sha256` reads every byte, `fast` the size and
# both ends (see histoflow.hashing.fast_sha256).
HASHERS = {"sha256": sha256_file, "fast": fast_sha256}


def fingerprint(path: str | os.PathLike | None, method: str = "sha256") -> dict | None:
    """Size and hash of an input file (`sha256` full, or `fast`: see fast_sha256).

    MIRAX slides (.mrxs) keep their pixels in a sibling folder of the same stem; its
    files are hashed too, so a changed .dat file is noticed.
    """
    if not path:
        return None
    path = Path(path)
    if method not in HASHERS:
        raise ValueError(f"unknown fingerprint method '{method}' (sha256 or fast)")
    hasher = HASHERS[method]
    record: dict = {
        "path": str(path),
        "bytes": path.stat().st_size,
        "method": method,
        "sha256": hasher(path),
    }
    companion = path.with_suffix("")
    if path.suffix.lower() == ".mrxs" and companion.is_dir():
        record["companion"] = {
            "path": str(companion),
            "bytes": sum(p.stat().st_size for p in companion.rglob("*") if p.is_file()),
            "sha256": tree_digest(companion, hasher),
        }
    return record


# Inputs up to this size are hashed in full for their identity; larger ones by size and
# both ends (fast_sha256), so that building the DAG of a cohort of whole slides stays
# cheap. Size and mtime are part of the identity either way.
FULL_HASH_LIMIT = 64 << 20


def identity(path: str | os.PathLike | None) -> dict | None:
    """Who a file is: size, mtime (ns) and a content hash (`sha256` under
    FULL_HASH_LIMIT bytes, else `fast`). Equal identities mean the same file contents;
    a replaced file differs whatever its mtime (a restored backup, `cp -p`).

    Used as the rerun trigger of the rules that read the file and in the fingerprint
    of resumable stores. Cached per (path, size, mtime, inode) within a process.
    """
    if not path:
        return None
    path = Path(path)
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):  # a folder, FIFO or device is never read here
        return {"path": str(path), "mode": stat.filemode(st.st_mode)}
    method = "sha256" if st.st_size <= FULL_HASH_LIMIT else "fast"
    key = (str(path), method, st.st_mtime_ns, st.st_size, st.st_ino)
    return copy.deepcopy(_identity(key))


@functools.lru_cache(maxsize=4096)
def _identity(key: tuple) -> dict:
    # The size and inode are only in the key: a changed file is hashed again.
    path, method, mtime_ns = key[:3]
    record = fingerprint(path, method)
    record["mtime_ns"] = mtime_ns
    companion = record.get("companion")
    if companion:
        files = [p for p in Path(companion["path"]).rglob("*") if p.is_file()]
        companion["mtime_ns"] = max((p.stat().st_mtime_ns for p in files), default=0)
    return record
