"""Fingerprints of the input files of a slide: size and sha256, so a changed input shows."""

from __future__ import annotations

import os
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
