"""`python -m histoflow.models list|fetch`: the built-in model cards and their weights."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from histoflow.errors import HistoflowError


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (errors print one line, status 1)."""
    from histoflow.models import zoo

    parser = argparse.ArgumentParser(prog="python -m histoflow.models", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="print the built-in model cards")
    fetch = sub.add_parser("fetch", help="download the published weights of a card")
    fetch.add_argument("name", help="card name, e.g. hovernet_fast-pannuke")
    fetch.add_argument("--to", type=Path, default=Path("."), help="folder (default: .)")
    fetch.add_argument("--sha256", help="expected sha256 (where the card has none)")
    fetch.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            sys.stdout.write(zoo.listing())
        else:
            sha = zoo.sha256_hex(args.sha256) if args.sha256 else None
            zoo.fetch_card(args.name, args.to, sha, progress=not args.no_progress)
    except HistoflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
