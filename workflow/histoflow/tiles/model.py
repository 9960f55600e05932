"""Tile-model cards (kind `tile`) and the modules they describe.

A tile model maps a batch of RGB tiles (B, 3, h, w) to one vector per tile (B, D). The
card (histoflow/schemas/model_card.schema.yaml, shared with dense models) says what the
D values are: `output.type` `classifier` with `classes`, or `embedding` (optional
`names`); expression-predicting models list their genes in `output.genes.input` and
`.output` (Ensembl IDs). See workflow/CONTRACTS.md.

Sources: `builtin` (histoflow.tiles.default_model, no weights; cards in tiles/cards/),
`torchscript`, `export` (.pt2) and `entrypoint` (+ `weights`), built by the models package's loader
(no pickle, no downloads).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from histoflow.errors import ModelError
from histoflow.models.card import MODEL_FILES, SOURCES, ModelCard, read_card, resolve_card_path

CARDS = Path(__file__).resolve().parent / "cards"


def builtin_cards() -> dict[str, Path]:
    """`builtin:<name>` -> card file, for the built-in tile models."""
    return {f"builtin:{p.stem}": p for p in sorted(CARDS.glob("*.yaml"))}


@dataclass(frozen=True)
class TileCard(ModelCard):
    """A validated card of kind `tile` (same files and sha256 as dense cards)."""

    @property
    def tile_size(self) -> int:
        """The tile side in pixels at the card's mpp."""
        return int(self.card["patch_input"][0])

    @property
    def dim(self) -> int:
        """The length of each tile's vector."""
        return int(self.card["output"]["dim"])

    @property
    def output_type(self) -> str:
        """`classifier` or `embedding`."""
        return self.card["output"]["type"]

    @property
    def classes(self) -> list[dict]:
        """[{name, color?}] for classifiers, [] otherwise."""
        return [dict(c) for c in self.card["output"].get("classes") or []]

    @property
    def feature_names(self) -> list[str]:
        """One name per value: the card's names, else its class names, else f0, f1, ..."""
        names = self.card["output"].get("names")
        if names:
            return [str(n) for n in names]
        if self.classes:
            return [c["name"] for c in self.classes]
        return [f"f{i}" for i in range(self.dim)]

    @property
    def genes(self) -> tuple[list[str] | None, list[str] | None]:
        """(input genes, output genes) of an expression model, None where absent."""
        genes = self.card["output"].get("genes") or {}
        return genes.get("input"), genes.get("output")

    @property
    def input(self) -> dict:
        """The input normalisation: scale, per-channel mean and std."""
        spec = self.card["input"]
        return {
            "scale": float(spec["scale"]),
            "mean": [float(v) for v in spec["mean"]],
            "std": [float(v) for v in spec["std"]],
        }


def _fail(where, field: str, message: str) -> ModelError:
    return ModelError(f"model card '{where}': field '{field}': {message}")


def _check_tile_card(card: dict, path: Path) -> None:
    """What the schema cannot say: square tiles, one class/name/gene per value, one source."""
    if card["kind"] != "tile":
        raise _fail(
            path, "kind", f"'{card['kind']}': the tiles stage needs a tile model (kind: tile)"
        )
    h, w = card["patch_input"]
    if h != w:
        raise _fail(path, "patch_input", f"tiles are square, got {card['patch_input']}")
    out = card["output"]
    dim = out["dim"]
    if out["type"] == "classifier" and len(out.get("classes") or []) != dim:
        raise _fail(path, "output.classes", f"a classifier needs {dim} classes, one per value")
    for field, values in (
        ("names", out.get("names")),
        ("genes.output", (out.get("genes") or {}).get("output")),
    ):
        if values is not None and len(values) != dim:
            raise _fail(path, f"output.{field}", f"needs {dim} entries, got {len(values)}")
    sources = [k for k in SOURCES if k in card["source"]]
    if len(sources) != 1:
        raise _fail(path, "source", f"give exactly one of {', '.join(SOURCES)}")
    for key in MODEL_FILES:
        value = card["source"].get(key)
        if value and not (path.parent / value).is_file():
            raise _fail(path, f"source.{key}", f"file '{value}' not found")


def _resolve(spec: str) -> Path:
    builtins = builtin_cards()
    if spec in builtins:
        return builtins[spec]
    try:
        return resolve_card_path(spec)
    except ModelError:
        known = ", ".join(builtins)
        raise ModelError(
            f"config field 'tiles.model': model card '{spec}' not found (give a card YAML "
            f"path, or a built-in tile model: {known})"
        ) from None


def load_tile_card(spec: str | os.PathLike) -> TileCard:
    """A tile card by built-in name (`builtin:stain_stats`) or path, validated."""
    path = _resolve(str(spec))
    card = read_card(path)
    _check_tile_card(card, path)
    return TileCard(card=card, path=path.resolve())


def build_tile_model(card: TileCard):
    """The nn.Module of a tile card, in eval mode, checked to give (B, dim) on a dummy batch."""
    import torch

    from histoflow.models.loader import build_model, dummy_forward
    from histoflow.tiles import default_model

    name = card.card["source"].get("builtin")
    if name is not None:
        try:
            model = default_model.build(name)
        except KeyError as exc:
            raise _fail(card.path, "source.builtin", str(exc.args[0])) from None
    else:
        model = build_model(card)  # TorchScript or entry point, as for dense models
    out = dummy_forward(card, model, 2)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, card.dim):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(
            f"model '{card.name}' gives {shape} for 2 tiles, but card '{card.path}' field "
            f"'output.dim' says (2, {card.dim})"
        )
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
        rel = source.get("torchscript") or source.get("export") or source.get("weights")
    except (yaml.YAMLError, AttributeError):
        rel = None
    if isinstance(rel, str) and (card.parent / rel).is_file():
        files.append(str(card.parent / rel))
    return files
