"""A sample sheet for a folder of ROI images: one row per PNG/JPEG/TIFF, IDs from file names.

    python -m histoflow.tiles.sheet path/to/rois --mpp 0.5 > config/samples.tsv

(from workflow/, or with histoflow installed). Sample IDs are the file stems with
characters outside `[A-Za-z0-9._-]` replaced by `_`, made unique with a numeric suffix,
in sorted path order, so the same folder always gives the same sheet.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def sheet_rows(folder: str | Path, mpp: float | None = None, recursive: bool = False) -> list[dict]:
    """One sample-sheet row per image of `folder`, with unique sample IDs."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder: '{folder}'")
    files = folder.rglob("*") if recursive else folder.glob("*")
    images = sorted(p for p in files if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    rows, seen = [], set()
    for path in images:
        # The sample schema's rules: no leading '.' or '-', at most 128 characters.
        base = re.sub(r"[^A-Za-z0-9._-]", "_", path.stem).lstrip(".-")[:120].strip(".")
        base = base or "image"
        sample, n = base, 1
        while sample in seen:
            n += 1
            sample = f"{base}-{n}"
        seen.add(sample)
        rows.append({"sample": sample, "path": str(path), "mpp": mpp, "mask": None})
    return rows


def to_tsv(rows: list[dict]) -> str:
    """The rows as a samples.tsv text."""
    cols = ("sample", "path", "mpp", "mask")
    lines = ["\t".join(cols)]
    for r in rows:
        lines.append("\t".join("" if r[c] is None else str(r[c]) for c in cols))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """Print the sample sheet of a folder of images; 1 when it holds none."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--mpp", type=float, help="µm per pixel of every image (required for PNG/JPEG)")
    ap.add_argument("--recursive", action="store_true", help="include subfolders")
    args = ap.parse_args(argv)
    rows = sheet_rows(args.folder, args.mpp, args.recursive)
    if not rows:
        print(f"no PNG/JPEG/TIFF images in '{args.folder}'", file=sys.stderr)
        return 1
    sys.stdout.write(to_tsv(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
