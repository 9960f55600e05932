"""Rule params that carry user text (paths, sheet rows), safe to show in `snakemake --report`.

Snakemake's HTML report embeds each job's params as JSON inside a `<script>` element
without escaping `</`, so a slide path such as `x</script><svg onload=...>` would end the
script and run as markup. The rule files pass such text through `encode` (strings holding
`<`, `>` or `&` are percent-encoded behind a marker) and scripts/_common.py `decode`s every
param before the script sees it: exactly reversible, and text without those characters
passes unchanged, so ordinary paths read the same in the report and trigger no reruns.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

MARKER = "report-safe:"
UNSAFE = frozenset("<>&")


def encode(value):
    """`value` with every string that HTML could misread percent-encoded (recursively)."""
    if isinstance(value, str):
        if UNSAFE.intersection(value) or value.startswith(MARKER):
            return MARKER + quote(value, safe="/:._- ")
        return value
    if isinstance(value, dict):
        return {key: encode(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(encode(item) for item in value)
    return value


def decode(value):
    """The inverse of `encode`."""
    if isinstance(value, str):
        return unquote(value[len(MARKER) :]) if value.startswith(MARKER) else value
    if isinstance(value, dict):
        return {key: decode(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(decode(item) for item in value)
    return value
