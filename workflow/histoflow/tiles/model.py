"""Tile-model cards (kind `tile`) and the modules they describe.

A tile model maps a batch of RGB tiles (B, 3, h, w) to one vector per tile (B, D). The
card says what the D values are (`output.type`: `classifier` with `classes`, or
`embedding`) and, for expression-predicting models, which genes go in and come out
(`output.genes.input` / `.output`, Ensembl IDs). See workflow/CONTRACTS.md.

Sources: `builtin` (histoflow.tiles.default_model, no weights), `torchscript` (a file
next to the card, loaded with torch.jit.load: no pickle), `entrypoint`
(`module:function` returning an nn.Module, optional `weights` loaded with
`torch.load(weights_only=True)`). No code downloads weights.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from histoflow.errors import ModelError

CARDS = Path(__file__).resolve().parent / "cards"
OUTPUT_TYPES = ("classifier", "embedding")


def builtin_cards() -> dict[str, Path]:
    """Card name (`builtin:<name>`) -> card file, for the built-in tile models."""
    out = {}
    for path in sorted(CARDS.glob("*.yaml")):
        out[yaml.safe_load(path.read_text())["name"]] = path
    return out


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class TileCard:
    card: dict  # the card as written (goes into metadata)
    path: Path  # the card file

    @property
    def name(self) -> str:
        return self.card["name"]

    @property
    def mpp(self) -> float:
        return float(self.card["mpp"])

    @property
    def tile_size(self) -> int:
        return int(self.card["patch_input"][0])

    @property
    def dim(self) -> int:
        return int(self.card["output"]["dim"])

    @property
    def output_type(self) -> str:
        return self.card["output"]["type"]

    @property
    def classes(self) -> list[dict]:
        """[{name, color?}] for classifiers, [] otherwise."""
        return [
            c if isinstance(c, dict) else {"name": str(c)}
            for c in self.card["output"].get("classes") or []
        ]

    @property
    def feature_names(self) -> list[str]:
        names = self.card["output"].get("names")
        if names:
            return [str(n) for n in names]
        if self.classes:
            return [c["name"] for c in self.classes]
        return [f"f{i}" for i in range(self.dim)]

    @property
    def genes(self) -> tuple[list[str] | None, list[str] | None]:
        genes = self.card["output"].get("genes") or {}
        return genes.get("input"), genes.get("output")

    @property
    def input(self) -> dict:
        spec = self.card.get("input") or {}
        return {
            "scale": float(spec.get("scale", 255)),
            "mean": [float(v) for v in spec.get("mean", [0.0, 0.0, 0.0])],
            "std": [float(v) for v in spec.get("std", [1.0, 1.0, 1.0])],
        }

    def weights_file(self) -> Path | None:
        source = self.card["source"]
        rel = source.get("torchscript") or source.get("weights")
        return (self.path.parent / rel) if rel else None

    def weights_sha256(self) -> str | None:
        path = self.weights_file()
        return sha256_file(path) if path else None


def _fail(where: Path | str, field: str, message: str) -> ModelError:
    return ModelError(f"model card '{where}': field '{field}': {message}")


def validate_tile_card(card: dict, where: Path | str) -> None:
    """Checks of the tile-kind fields (the general card schema lives with the models)."""
    if not isinstance(card, dict):
        raise ModelError(f"model card '{where}' is not a mapping")
    for key in ("name", "kind", "mpp", "patch_input", "output", "source"):
        if key not in card:
            raise _fail(where, key, "required but missing")
    if card["kind"] != "tile":
        raise _fail(where, "kind", f"'{card['kind']}' is not a tile model (kind: tile)")
    if not (isinstance(card["mpp"], int | float) and card["mpp"] > 0):
        raise _fail(where, "mpp", f"must be a number > 0, got {card['mpp']!r}")
    pi = card["patch_input"]
    if not (isinstance(pi, list) and len(pi) == 2 and pi[0] == pi[1] and int(pi[0]) >= 8):
        raise _fail(where, "patch_input", f"must be [n, n] with n >= 8, got {pi!r}")
    out = card["output"]
    if not isinstance(out, dict) or not isinstance(out.get("dim"), int) or out["dim"] < 1:
        raise _fail(where, "output.dim", "must be an integer >= 1")
    if out.get("type") not in OUTPUT_TYPES:
        raise _fail(where, "output.type", f"must be one of {', '.join(OUTPUT_TYPES)}")
    classes = out.get("classes") or []
    if out["type"] == "classifier" and len(classes) != out["dim"]:
        raise _fail(where, "output.classes", f"a classifier needs {out['dim']} class names")
    names = out.get("names") or []
    if names and len(names) != out["dim"]:
        raise _fail(where, "output.names", f"needs {out['dim']} names, got {len(names)}")
    genes = out.get("genes") or {}
    if genes.get("output") is not None and len(genes["output"]) != out["dim"]:
        raise _fail(where, "output.genes.output", f"needs {out['dim']} gene IDs")
    source = card["source"]
    kinds = [k for k in ("builtin", "torchscript", "entrypoint") if k in (source or {})]
    if len(kinds) != 1:
        raise _fail(where, "source", "exactly one of builtin, torchscript, entrypoint")


def load_tile_card(spec: str | os.PathLike) -> TileCard:
    """A card by built-in name (`builtin:stain-stats`) or by path to a YAML file."""
    text = str(spec)
    builtins = builtin_cards()
    if text in builtins:
        path = builtins[text]
    else:
        path = Path(text)
        if text.startswith("builtin:") or not path.is_file():
            known = ", ".join(sorted(builtins))
            raise ModelError(
                f"model card '{text}' not found (a path to a card YAML, or one of: {known})"
            )
    try:
        card = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ModelError(f"model card '{path}' is not valid YAML: {exc}") from exc
    validate_tile_card(card, path)
    return TileCard(card=card, path=path.resolve())


def build_tile_model(card: TileCard):
    """The nn.Module of a tile card, in eval mode on the CPU."""
    import torch

    from histoflow.tiles import default_model

    source = card.card["source"]
    if "builtin" in source:
        try:
            return default_model.build(source["builtin"])
        except KeyError as exc:
            raise _fail(card.path, "source.builtin", str(exc.args[0])) from None
    weights = card.weights_file()
    if weights is not None and not weights.is_file():
        raise ModelError(f"model card '{card.path}': weights file '{weights}' not found")
    if "torchscript" in source:
        try:
            return torch.jit.load(str(weights), map_location="cpu").eval()
        except RuntimeError as exc:
            raise ModelError(
                f"model '{card.name}': cannot load TorchScript '{weights}': {exc}"
            ) from exc
    module_name, _, func = str(source["entrypoint"]).partition(":")
    try:
        model = getattr(importlib.import_module(module_name), func)()
    except (ImportError, AttributeError) as exc:
        raise _fail(
            card.path, "source.entrypoint", f"cannot import '{source['entrypoint']}': {exc}"
        ) from exc
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    return model.eval()


def model_files(spec: str) -> list[str]:
    """The card file and its weights file, for rule inputs (rerun when they change).

    Never raises: built-in cards give [], missing files are left out, and the job then
    fails with a message naming the file.
    """
    if str(spec).startswith("builtin:"):
        return []
    card = Path(spec)
    if not card.is_file():
        return []
    files = [str(card)]
    try:
        source = (yaml.safe_load(card.read_text()) or {}).get("source") or {}
        rel = source.get("torchscript") or source.get("weights")
    except (yaml.YAMLError, AttributeError):
        rel = None
    if isinstance(rel, str) and (card.parent / rel).is_file():
        files.append(str(card.parent / rel))
    return files
