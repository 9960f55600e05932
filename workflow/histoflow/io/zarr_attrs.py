"""The attributes of a Zarr v3 group read from its `zarr.json` with the json module.

For rule resources: Snakemake evaluates them before a store exists (dry runs) and again
once it does, so a store that is not there yet is `None`, never an error; a store that
is there but unreadable is an error naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

from histoflow.errors import HistoflowError


def read_group_attrs(path: str | Path, error: type[HistoflowError]) -> dict | None:
    """The group attributes of the store at `path`, or None when `path` does not exist.

    A store that exists but has no readable group metadata raises `error`.
    """
    path = Path(path)
    if not path.exists():
        return None
    meta = path / "zarr.json"
    try:
        node = json.loads(meta.read_text())
    except (OSError, ValueError) as exc:
        raise error(f"file '{meta}': not readable Zarr group metadata ({exc})") from exc
    if not isinstance(node, dict) or node.get("node_type") != "group":
        raise error(f"file '{meta}': not the metadata of a Zarr group")
    attrs = node.get("attributes", {})
    if not isinstance(attrs, dict):
        raise error(f"file '{meta}': 'attributes' is not a mapping")
    return attrs
