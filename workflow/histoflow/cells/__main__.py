"""`python -m histoflow.cells concat`: join per-slide AnnData files into one cohort file.

    python -m histoflow.cells concat -o cohort.h5ad results/*/cells/cells.h5ad

The result has `obs["sample"]`, ids `<id>:<sample>`, the slides' Delaunay graphs
block-diagonal in `obsp`, and each slide's metadata in `uns["histoflow"]["slides"]`.
It is built in memory (about 100 bytes a cell plus the graphs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from histoflow.errors import HistoflowError


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (errors print one line, status 1)."""
    from histoflow.cells.anndata_io import concat

    parser = argparse.ArgumentParser(prog="python -m histoflow.cells", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    join = sub.add_parser("concat", help="join per-slide cells.h5ad files into one")
    join.add_argument("inputs", nargs="+", type=Path, help="per-slide cells.h5ad files")
    join.add_argument("-o", "--output", type=Path, required=True, help="cohort .h5ad to write")
    args = parser.parse_args(argv)
    try:
        joined = concat(args.inputs, args.output)
    except HistoflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    slides = len(joined.obs["sample"].cat.categories)
    print(f"{args.output}: {joined.n_obs} cells from {slides} slides, {joined.n_vars} measurements")
    return 0


if __name__ == "__main__":
    sys.exit(main())
