"""Reading the cohort report back: its JSON blocks and pictures (shared by the tests)."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

from PIL import Image


def json_block(page: str, block_id: str):
    """The value of the page's <script type="application/json" id=block_id>."""
    match = re.search(
        rf'<script type="application/json" id="{block_id}"[^>]*>(.*?)</script>', page, re.S
    )
    assert match, f"no JSON block {block_id}"
    return json.loads(match.group(1))


def decode_picture(uri: str) -> Image.Image:
    """A data URI picture of the page, decoded."""
    head, data = uri.split(",", 1)
    assert head == "data:image/jpeg;base64", head
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


def read_page(path: Path) -> tuple[str, dict, list, dict]:
    """Text, data, images and times of a report page."""
    page = Path(path).read_text(encoding="utf-8")
    return (
        page,
        json_block(page, "report-data"),
        json_block(page, "report-images"),
        json_block(page, "report-times"),
    )
