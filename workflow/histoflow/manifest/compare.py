"""Compare two results folders: bytes where the format is deterministic, decoded
content where a container stores timestamps (see `decoders`).

`python -m histoflow.manifest compare OLD NEW` prints one verdict per file and exits
1 if any result differs.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from histoflow.manifest.decoders import DECODERS
from histoflow.paths import LAYOUT

# Files that record the run, not its results.
RUN_RECORDS = (f"*/{LAYOUT['run_json']}",)
# Verdicts that mean the two folders hold the same result.
SAME = ("bytes", "decoded", "ignored")


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def compare_files(a: Path, b: Path) -> str:
    """Verdict on two files present on both sides: "bytes", "decoded" or "DIFFERS (...)"."""
    if a.read_bytes() == b.read_bytes():
        return "bytes"
    decoder = DECODERS.get(a.suffix.lower())
    if decoder is None:
        return "DIFFERS (bytes, no decoder for this format)"
    if repr(decoder(a)) == repr(decoder(b)):  # repr: NaN equals NaN
        return "decoded"
    return "DIFFERS (decoded content)"


def compare_trees(
    first: str | os.PathLike,
    second: str | os.PathLike,
    ignore: tuple[str, ...] = RUN_RECORDS,
) -> dict[str, str]:
    """Compare every file under two results folders.

    Returns relative path -> verdict: "bytes" (identical bytes), "decoded"
    (bytes differ, content equal after decoding, see DECODERS), "ignored" (a run
    record, see RUN_RECORDS), or a message starting with "DIFFERS"/"MISSING".
    """
    a_root, b_root = Path(first), Path(second)
    a_files, b_files = _files(a_root), _files(b_root)
    verdicts: dict[str, str] = {}
    for rel in sorted(a_files | b_files):
        if any(Path(rel).match(pattern) for pattern in ignore):
            verdicts[rel] = "ignored"
        elif rel not in a_files or rel not in b_files:
            verdicts[rel] = f"MISSING in {'second' if rel in a_files else 'first'}"
        else:
            verdicts[rel] = compare_files(a_root / rel, b_root / rel)
    return verdicts


def main(argv: list[str] | None = None) -> int:
    """`python -m histoflow.manifest compare OLD NEW`: exit 1 if any result differs."""
    parser = argparse.ArgumentParser(prog="python -m histoflow.manifest")
    sub = parser.add_subparsers(dest="command", required=True)
    cmp = sub.add_parser("compare", help="compare two results folders")
    cmp.add_argument("first")
    cmp.add_argument("second")
    args = parser.parse_args(argv)
    verdicts = compare_trees(args.first, args.second)
    for path, verdict in verdicts.items():
        print(f"{verdict}\t{path}")
    counts = {v: sum(x == v for x in verdicts.values()) for v in SAME}
    bad = len(verdicts) - sum(counts.values())
    print(
        f"{len(verdicts)} files: {counts['bytes']} identical bytes, {counts['decoded']} equal "
        f"decoded, {counts['ignored']} run records ignored, {bad} different"
    )
    return 1 if bad else 0
