"""`results/{sample}/mask/` (workflow/CONTRACTS.md): the mask stage's files.

`mask.png` (uint8 0/255), `thumbnail.png`, `overlay.png` and `mask.json`, written
atomically, the JSON last: its presence means the three pictures are complete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from histoflow.errors import HistoflowError
from histoflow.io.atomic import atomic_output

if TYPE_CHECKING:
    from histoflow.tissue import TissueMask


class MaskFileError(HistoflowError):
    """A mask file is missing or unreadable; the message names the file."""


def _save_png(array: np.ndarray, path: Path) -> None:
    with atomic_output(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def write_mask_files(
    result: TissueMask,
    mask_png: str | Path,
    thumbnail_png: str | Path,
    overlay_png: str | Path,
    mask_json: str | Path,
) -> None:
    """Write the mask, thumbnail and overlay pictures, then mask.json."""
    _save_png(result.mask.astype(np.uint8) * 255, Path(mask_png))
    _save_png(result.thumbnail, Path(thumbnail_png))
    _save_png(result.overlay, Path(overlay_png))
    with atomic_output(mask_json) as tmp:
        tmp.write_text(json.dumps(result.meta, indent=2, sort_keys=True) + "\n")


def read_mask_meta(path: str | Path) -> dict:
    """mask.json as a dict; `MaskFileError` names the file when it is missing or broken."""
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MaskFileError(f"file '{path}': not a readable mask.json ({exc})") from exc
    if not isinstance(meta, dict):
        raise MaskFileError(f"file '{path}': not a JSON object")
    return meta


def read_mask(mask_png: str | Path, mask_json: str | Path) -> tuple[np.ndarray, dict]:
    """The mask written by `write_mask_files` as a bool (h, w) array, and its metadata."""
    meta = read_mask_meta(mask_json)
    try:
        with Image.open(mask_png) as img:
            mask = np.asarray(img.convert("L")) > 0
    except OSError as exc:
        raise MaskFileError(f"file '{mask_png}': not a readable mask image ({exc})") from exc
    return mask, meta


def read_thumbnail(thumbnail_png: str | Path) -> np.ndarray:
    """The thumbnail written by `write_mask_files` as (h, w, 3) uint8 RGB."""
    try:
        with Image.open(thumbnail_png) as img:
            return np.asarray(img.convert("RGB"))
    except OSError as exc:
        raise MaskFileError(f"file '{thumbnail_png}': not a readable thumbnail ({exc})") from exc
