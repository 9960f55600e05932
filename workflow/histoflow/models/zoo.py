"""The built-in model cards as a zoo: a listing, and the download of published weights.

`python -m histoflow.models list` prints the cards; `python -m histoflow.models fetch
NAME [--to DIR]` downloads the weights file a card names (`weights.url`). The download
goes to `<file>.part`, resumes a partial `.part` with an HTTP Range request, is checked
against the card's (or the user's) sha256, and only then is renamed to `<file>`: an
interrupted or wrong download never leaves a file under the final name. Nothing in the
workflow calls this; weights are given with config field `model.weights`.
"""

from __future__ import annotations

import http.client
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from histoflow.errors import ModelError
from histoflow.hashing import sha256_file
from histoflow.models.card import BUILTIN_CARDS, ModelCard, load_card

CHUNK = 1 << 20  # bytes read per request iteration
TIMEOUT_S = 60.0  # a stalled connection fails after this long (then resume)
_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def cards() -> list[ModelCard]:
    """Every built-in dense model card, by name."""
    return [load_card(f"builtin:{p.stem}") for p in sorted(BUILTIN_CARDS.glob("*.yaml"))]


def card_row(card: ModelCard) -> dict[str, str]:
    """The listing row of a card: name, task, mpp, classes, licence, weights."""
    c = card.card
    tasks = [f"{t['task']} ({t['method']})" for t in c["postprocess"]]
    classes = [
        f"{t['task']}: " + ", ".join(k["name"] for k in t.get("classes") or [])
        for t in c["postprocess"]
    ]
    if "weights" in c:
        how = f"python -m histoflow.models fetch {card.name}; config model.weights: FILE"
    elif "builtin" in c["source"]:
        how = "none (weight-free)"
    else:
        how = "files next to the card"
    return {
        "name": card.name,
        "task": "; ".join(tasks) or "-",
        "mpp": f"{card.mpp:g}",
        "classes": "; ".join(classes) or "-",
        "licence": c.get("licence", "n/a (no trained weights)"),
        "weights": how,
    }


def listing() -> str:
    """The cards as readable text blocks, one per card."""
    blocks = []
    for card in cards():
        row = card_row(card)
        lines = [f"builtin:{row.pop('name')}"]
        lines += [f"  {key:<8} {value}" for key, value in row.items()]
        if "weights" in card.card:
            lines.append(f"  {'url':<8} {card.card['weights']['url']}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def fetch_card(
    name: str, to: Path, sha256: str | None = None, progress: bool = True, say=print
) -> Path:
    """Download the published weights of built-in card `name` into folder `to`.

    `sha256` (else the card's `weights.sha256`) is checked; with neither, the computed
    hash is reported so that it can be recorded. Returns the final file's path.
    """
    card = load_card(f"builtin:{name.removeprefix('builtin:')}")
    info = card.card.get("weights")
    if info is None:
        raise ModelError(f"model card '{card.name}' has no published weights to fetch")
    say(f"{card.name}: weights licence {card.card.get('licence', 'not stated')}")
    expected = sha256 or info.get("sha256")
    dest = Path(to) / info["file"]
    got = download(info["url"], dest, expected, progress=progress, say=say)
    if expected is None:
        say(
            f"no sha256 is published for {info['file']}: its sha256 is {got}; compare it "
            "with a trusted source (or give --sha256 next time)"
        )
    say(
        f"weights written to {dest}; run with config model.card: builtin:{card.name} "
        f"and model.weights: {dest}"
    )
    return dest


def download(
    url: str,
    dest: Path,
    sha256: str | None = None,
    progress: bool = True,
    say: Callable[[str], object] = print,
    timeout: float = TIMEOUT_S,
) -> str:
    """Download `url` to `dest` through `dest.part` (resumed if present); returns the sha256.

    Raises:
        ModelError: the server fails, the connection drops (the `.part` file is kept for
            a resume), or the complete file's sha256 differs from `sha256` (the `.part`
            file is deleted: resuming wrong bytes cannot help).
    """
    if not url.startswith(("http://", "https://")):
        raise ModelError(f"download of '{url}': only http(s) addresses are fetched")
    dest = Path(dest)
    if dest.is_file():
        return _existing(dest, sha256, say)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    _transfer(url, part, progress, timeout)
    got = sha256_file(part)
    if sha256 is not None and got != sha256.lower():
        part.unlink()
        raise ModelError(
            f"download of '{url}' has sha256 {got}, expected {sha256}: refused and deleted "
            f"(nothing written to '{dest}')"
        )
    os.replace(part, dest)
    return got


def _existing(dest: Path, sha256: str | None, say) -> str:
    got = sha256_file(dest)
    if sha256 is not None and got != sha256.lower():
        raise ModelError(
            f"'{dest}' exists with sha256 {got}, expected {sha256}: remove it to download again"
        )
    say(f"{dest} is already there (sha256 {got})")
    return got


def _transfer(url: str, part: Path, progress: bool, timeout: float) -> None:
    """Bring `part` to the full length of `url`, resuming from its present size."""
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing after `have`: the part file is complete
            return
        raise ModelError(f"download of '{url}' failed: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise ModelError(f"download of '{url}' failed: {exc}") from exc
    with response:
        start, total = _span(response, have)
        _stream(response, part, start, total, progress, url)


def _span(response, have: int) -> tuple[int, int | None]:
    """(offset the body starts at, total size or None) of a 200 or 206 response."""
    if response.status == 206:
        match = _RANGE.fullmatch(response.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != have:
            raise ModelError(
                f"server answered the resume at byte {have} with Content-Range "
                f"'{response.headers.get('Content-Range')}'"
            )
        return have, None if match.group(3) == "*" else int(match.group(3))
    length = response.headers.get("Content-Length")
    return 0, int(length) if length is not None else None  # a full body: start over


def _stream(response, part: Path, start: int, total: int | None, progress: bool, url: str):
    from tqdm import tqdm

    done = start
    mode = "ab" if start else "wb"
    with (
        open(part, mode) as out,
        tqdm(total=total, initial=start, unit="B", unit_scale=True, disable=not progress) as bar,
    ):
        out.truncate(start)
        try:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                done += len(chunk)
                bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as exc:
            _interrupted(url, part, done, total, exc)
        finally:
            out.flush()
            os.fsync(out.fileno())
    if total is not None and done != total:
        _interrupted(url, part, done, total, "connection closed early")


def _interrupted(url: str, part: Path, done: int, total: int | None, why) -> None:
    of = f" of {total}" if total is not None else ""
    raise ModelError(
        f"download of '{url}' stopped after {done}{of} bytes ({why}); '{part}' is kept: "
        "run the same fetch again to resume"
    )


def sha256_hex(text: str) -> str:
    """`text` checked as a sha256 hex digest (lower case)."""
    value = text.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ModelError(f"--sha256: '{text}' is not 64 hex digits")
    return value


__all__ = ["card_row", "cards", "download", "fetch_card", "listing", "sha256_hex"]
