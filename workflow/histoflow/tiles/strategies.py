"""Write strategies: when and how the tile predictions of an image become one written image.

An *image* is one input file (a sample-sheet row); its *samples* are the planes that
are predicted separately (the pages of a multi-page TIFF; a plain PNG/JPEG has one).
Predictions arrive as tiles, in any order and in batches that may mix images: each
tile is an (h, w, C) array placed at (y, x) of its sample's canvas. For a tile-level
model the canvas is the tile grid (one cell per tile, h = w = 1); for a dense model it
is the pixel grid.

All strategies share one interface, `add(batch_predictions, batch_tile_info)` and
`finish()`, and all write the same thing: per image, `scores` (S, H, W, C) float32 =
sum of the tiles covering a pixel / their number, and `coverage` (S, H, W) uint8 =
that number (0 = no tile here). Samples smaller than the largest are padded
(coverage 0). An image is complete when every sample has received the number of
tiles its `ImageSpec` announces; a tile for an image already written, or a tile seen
twice, is an error, so no image is written twice.

- `CacheTiles`: keep the tiles of an image until all have arrived, then stitch and
  write. Memory: the tiles of the images in flight. The stitch sums tiles in sorted
  (sample, y, x) order, so overlapping tiles give the same bytes whatever the order.
- `WriteImage`: paste tiles into the image's canvas as they arrive and write the whole
  image once all samples are complete. Memory: one canvas per image in flight, however
  many tiles (whole-sample predictions are just tiles that cover their sample).
- `WriteTilesZarr`: write tiles straight into a Zarr store created up front, through
  a write-back cache of a few chunks; an image's group gets `complete: true` when its
  last tile lands. Memory: the cached chunks (two chunk rows by default), whatever
  the image size. Tiles must not overlap (the tile grid of `infer_tiles` guarantees it).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np

from histoflow.errors import HistoflowError

log = logging.getLogger(__name__)


class StrategyName(StrEnum):
    """The write strategies, by their config name (`tiles.write_strategy`)."""

    CACHE_TILES = "cache_tiles"
    WRITE_IMAGE = "write_image"
    WRITE_TILES_ZARR = "write_tiles_zarr"


@dataclass(frozen=True)
class TileInfo:
    """Where one tile prediction goes: image id, sample index, top-left (y, x) on the canvas."""

    image: str
    sample: int
    y: int
    x: int


@dataclass(frozen=True)
class ImageSpec:
    """What an image will receive: per sample, the canvas (H, W) and the number of tiles."""

    shapes: tuple[tuple[int, int], ...]
    tiles: tuple[int, ...]
    channels: int

    def __post_init__(self):
        if len(self.shapes) != len(self.tiles) or not self.shapes:
            raise ValueError("ImageSpec: one shape and one tile count per sample, at least one")
        if self.channels < 1 or any(n < 0 for n in self.tiles):
            raise ValueError(f"ImageSpec: bad channels/tiles {self.channels}, {self.tiles}")

    @property
    def canvas(self) -> tuple[int, int, int]:
        """(S, H, W): samples padded to the largest."""
        return (
            len(self.shapes),
            max(h for h, _ in self.shapes),
            max(w for _, w in self.shapes),
        )


@dataclass
class StitchedImage:
    """A finished image as handed to a sink."""

    image: str
    spec: ImageSpec
    scores: np.ndarray  # (S, H, W, C) float32
    coverage: np.ndarray  # (S, H, W) uint8


Sink = Callable[[StitchedImage], None]


@dataclass
class _Progress:
    spec: ImageSpec
    received: list[int]
    seen: set[tuple[int, int, int]] = field(default_factory=set)

    def complete(self) -> bool:
        return all(r == n for r, n in zip(self.received, self.spec.tiles))


class WriteStrategy(ABC):
    """Common bookkeeping: validates every tile and decides when an image is complete."""

    name: StrategyName

    def __init__(self, images: dict[str, ImageSpec]):
        if not images:
            raise ValueError("no images to write")
        self.images = dict(images)
        self._progress = {k: _Progress(s, [0] * len(s.tiles)) for k, s in self.images.items()}
        self.written: list[str] = []  # image ids in the order they were written

    def add(self, batch_predictions: Sequence[np.ndarray] | np.ndarray, batch_tile_info) -> None:
        """Take a batch: predictions[i] is an (h, w, C) or (C,) array for batch_tile_info[i]."""
        infos = list(batch_tile_info)
        if len(batch_predictions) != len(infos):
            raise ValueError(
                f"{len(batch_predictions)} predictions for {len(infos)} tile infos in a batch"
            )
        finished = []
        for pred, info in zip(batch_predictions, infos):
            tile = self._check(np.asarray(pred), info)
            self._take(tile, info)
            prog = self._progress[info.image]
            prog.received[info.sample] += 1
            if prog.complete():
                finished.append(info.image)
        for image in finished:
            self._complete(image)

    def finish(self) -> list[str]:
        """Write images that expected no tile at all; fail if any image is incomplete."""
        for image, prog in list(self._progress.items()):
            if sum(prog.spec.tiles) == 0:
                self._complete(image)
        if self._progress:
            missing = ", ".join(
                f"'{k}' ({sum(p.received)} of {sum(p.spec.tiles)} tiles)"
                for k, p in sorted(self._progress.items())
            )
            raise ValueError(f"images not complete at finish: {missing}")
        return list(self.written)

    # -- helpers ----------------------------------------------------------------------
    def _check(self, pred: np.ndarray, info: TileInfo) -> np.ndarray:
        prog = self._progress.get(info.image)
        if prog is None:
            if info.image in self.written:
                raise ValueError(f"image '{info.image}': tile arrived after the image was written")
            raise ValueError(f"tile for unknown image '{info.image}'")
        spec = prog.spec
        if not 0 <= info.sample < len(spec.shapes):
            raise ValueError(f"image '{info.image}': no sample {info.sample}")
        tile = pred.reshape(1, 1, -1) if pred.ndim == 1 else pred
        if tile.ndim != 3 or tile.shape[2] != spec.channels:
            raise ValueError(
                f"image '{info.image}': tile of shape {pred.shape}, expected (h, w, "
                f"{spec.channels})"
            )
        h, w = spec.shapes[info.sample]
        th, tw = tile.shape[:2]
        if info.y < 0 or info.x < 0 or info.y + th > h or info.x + tw > w:
            raise ValueError(
                f"image '{info.image}' sample {info.sample}: tile ({info.y}, {info.x}) of "
                f"{th}x{tw} outside the {h}x{w} canvas"
            )
        key = (info.sample, info.y, info.x)
        if key in prog.seen:
            raise ValueError(f"image '{info.image}': tile {key} (sample, y, x) arrived twice")
        if prog.received[info.sample] >= spec.tiles[info.sample]:
            raise ValueError(
                f"image '{info.image}' sample {info.sample}: more than the announced "
                f"{spec.tiles[info.sample]} tiles"
            )
        prog.seen.add(key)
        return tile

    def _complete(self, image: str) -> None:
        spec = self._progress.pop(image).spec
        self._write(image, spec)
        self.written.append(image)
        log.debug("%s: image '%s' written", self.name, image)

    @abstractmethod
    def _take(self, tile: np.ndarray, info: TileInfo) -> None: ...

    @abstractmethod
    def _write(self, image: str, spec: ImageSpec) -> None: ...


def _empty(spec: ImageSpec, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    s, h, w = spec.canvas
    return np.zeros((s, h, w, spec.channels), dtype), np.zeros((s, h, w), np.uint16)


def _normalise(total: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = (total / np.maximum(count, 1)[..., None]).astype(np.float32)
    return scores, np.minimum(count, 255).astype(np.uint8)


class CacheTiles(WriteStrategy):
    """Cache an image's tiles; stitch and hand it to `sink` when the last one arrives."""

    name = StrategyName.CACHE_TILES

    def __init__(self, images: dict[str, ImageSpec], sink: Sink):
        super().__init__(images)
        self.sink = sink
        self._cache: dict[str, list[tuple[TileInfo, np.ndarray]]] = {}

    def _take(self, tile, info):
        # Copy: the caller may reuse its batch buffer.
        self._cache.setdefault(info.image, []).append((info, np.array(tile, np.float32)))

    def _write(self, image, spec):
        total, count = _empty(spec)
        tiles = sorted(self._cache.pop(image, []), key=lambda t: (t[0].sample, t[0].y, t[0].x))
        for info, tile in tiles:
            th, tw = tile.shape[:2]
            total[info.sample, info.y : info.y + th, info.x : info.x + tw] += tile
            count[info.sample, info.y : info.y + th, info.x : info.x + tw] += 1
        self.sink(StitchedImage(image, spec, *_normalise(total, count)))


class WriteImage(WriteStrategy):
    """Accumulate into the image's canvas; hand the whole image to `sink` once complete."""

    name = StrategyName.WRITE_IMAGE

    def __init__(self, images: dict[str, ImageSpec], sink: Sink):
        super().__init__(images)
        self.sink = sink
        self._canvas: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _take(self, tile, info):
        if info.image not in self._canvas:
            self._canvas[info.image] = _empty(self._progress[info.image].spec)
        total, count = self._canvas[info.image]
        th, tw = tile.shape[:2]
        total[info.sample, info.y : info.y + th, info.x : info.x + tw] += tile
        count[info.sample, info.y : info.y + th, info.x : info.x + tw] += 1

    def _write(self, image, spec):
        total, count = self._canvas.pop(image, None) or _empty(spec)
        self.sink(StitchedImage(image, spec, *_normalise(total, count)))


# -- Zarr layout shared by the sink and WriteTilesZarr ---------------------------------
def _create_image_group(root, image: str, spec: ImageSpec, chunks: tuple[int, int]):
    s, h, w = spec.canvas
    ch, cw = max(1, min(chunks[0], h)), max(1, min(chunks[1], w))
    group = root.create_group(image)
    group.create_array(
        "scores",
        shape=(s, h, w, spec.channels),
        chunks=(1, ch, cw, spec.channels),
        dtype="float32",
        fill_value=0.0,
    )
    group.create_array("coverage", shape=(s, h, w), chunks=(1, ch, cw), dtype="uint8", fill_value=0)
    group.attrs.update(
        {
            "sample_shapes": [list(shape) for shape in spec.shapes],
            "tiles": list(spec.tiles),
            "complete": False,
        }
    )
    return group


class ZarrImageSink:
    """A sink that writes each finished image as a group `<image>/{scores,coverage}`.

    Same layout, chunks and attributes as `WriteTilesZarr`, so the three strategies
    give identical stores. Chunks that stay all-fill (no tile) are not stored.
    """

    def __init__(self, root, chunks: tuple[int, int] = (256, 256)):
        self.root = root
        self.chunks = chunks

    def __call__(self, image: StitchedImage) -> None:
        """Write one finished image."""
        group = _create_image_group(self.root, image.image, image.spec, self.chunks)
        group["scores"][...] = image.scores
        group["coverage"][...] = image.coverage
        group.attrs["complete"] = True


class _ChunkCache:
    """Write-back cache of whole chunks of one image's arrays.

    Tiles are much smaller than chunks (a tile-grid map has one cell per tile), and a
    Zarr write of part of a chunk reads, decodes and rewrites the whole chunk. Pasting
    into cached chunks and writing each chunk whole when it is evicted makes a
    row-major tile stream write every chunk once; memory is `max_chunks` chunks.
    """

    def __init__(self, group, max_chunks: int):
        self.scores, self.coverage = group["scores"], group["coverage"]
        self.ch, self.cw = self.scores.chunks[1:3]
        self.max_chunks = max(1, max_chunks)
        self._cache: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._stored: set[tuple[int, int, int]] = set()  # evicted at least once

    def _box(self, key):
        s, i, j = key
        _, h, w = self.coverage.shape
        return (
            s,
            slice(i * self.ch, min((i + 1) * self.ch, h)),
            slice(j * self.cw, min((j + 1) * self.cw, w)),
        )

    def _get(self, key):
        if key in self._cache:
            self._cache[key] = self._cache.pop(key)  # most recently used last
            return self._cache[key]
        box = self._box(key)
        if key in self._stored:
            pair = (self.scores[box], self.coverage[box])
        else:
            h, w = box[1].stop - box[1].start, box[2].stop - box[2].start
            pair = (
                np.zeros((h, w, self.scores.shape[3]), np.float32),
                np.zeros((h, w), np.uint8),
            )
        self._cache[key] = pair
        while len(self._cache) > self.max_chunks:
            self._evict(next(iter(self._cache)))
        return pair

    def _evict(self, key):
        scores, coverage = self._cache.pop(key)
        box = self._box(key)
        self.scores[box] = scores
        self.coverage[box] = coverage
        self._stored.add(key)

    def paste(self, sample: int, y: int, x: int, tile: np.ndarray) -> None:
        th, tw = tile.shape[:2]
        for i in range(y // self.ch, (y + th - 1) // self.ch + 1):
            for j in range(x // self.cw, (x + tw - 1) // self.cw + 1):
                scores, coverage = self._get((sample, i, j))
                y0, x0 = max(y, i * self.ch), max(x, j * self.cw)
                y1 = min(y + th, i * self.ch + scores.shape[0])
                x1 = min(x + tw, j * self.cw + scores.shape[1])
                cy, cx = y0 - i * self.ch, x0 - j * self.cw
                scores[cy : cy + y1 - y0, cx : cx + x1 - x0] = tile[
                    y0 - y : y1 - y, x0 - x : x1 - x
                ]
                coverage[cy : cy + y1 - y0, cx : cx + x1 - x0] = 1

    def flush(self) -> None:
        while self._cache:
            self._evict(next(iter(self._cache)))


class WriteTilesZarr(WriteStrategy):
    """Write tiles into `root` (a Zarr group) as they arrive, through a small chunk cache.

    The cache holds `cache_chunks` chunks per image in flight (default: two rows of
    chunks plus two, so a row-major stream writes each chunk exactly once). Chunks
    never touched are never written, so background costs no disk.
    """

    name = StrategyName.WRITE_TILES_ZARR

    def __init__(
        self,
        images: dict[str, ImageSpec],
        root,
        chunks: tuple[int, int] = (256, 256),
        on_complete: Callable[[str], None] | None = None,
        cache_chunks: int | None = None,
    ):
        super().__init__(images)
        self.root = root
        self.on_complete = on_complete
        self._groups = {k: _create_image_group(root, k, s, chunks) for k, s in images.items()}
        self._caches = {}
        for k, group in self._groups.items():
            per_row = -(-group["coverage"].shape[2] // group["coverage"].chunks[2])
            self._caches[k] = _ChunkCache(group, cache_chunks or 2 * per_row + 2)

    def _take(self, tile, info):
        self._caches[info.image].paste(
            info.sample, info.y, info.x, tile.astype(np.float32, copy=False)
        )

    def _write(self, image, _spec):
        self._caches.pop(image).flush()
        self._groups.pop(image).attrs["complete"] = True
        if self.on_complete is not None:
            self.on_complete(image)


def make_strategy(
    name: StrategyName | str,
    images: dict[str, ImageSpec],
    root,
    chunks: tuple[int, int] = (256, 256),
) -> WriteStrategy:
    """The strategy `name` writing into the Zarr group `root` (same layout for all three)."""
    try:
        name = StrategyName(name)
    except ValueError:
        known = ", ".join(s.value for s in StrategyName)
        raise ValueError(f"unknown write strategy '{name}' (known: {known})") from None
    if name is StrategyName.WRITE_TILES_ZARR:
        return WriteTilesZarr(images, root, chunks)
    sink = ZarrImageSink(root, chunks)
    return (
        CacheTiles(images, sink) if name is StrategyName.CACHE_TILES else WriteImage(images, sink)
    )


def read_image(root, image: str) -> tuple[np.ndarray, np.ndarray]:
    """(scores, coverage) of a complete image in a store written by any strategy."""
    group = root[image]
    if not group.attrs.get("complete"):
        raise ValueError(f"image '{image}' in {root.store} is not complete")
    return group["scores"][...], group["coverage"][...]


def read_grid_map(map_path: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(scores (H, W, C), coverage (H, W), root attrs) of the map `infer_tiles` wrote.

    The samples of a multi-page image are stacked top to bottom in page order, with one
    empty cell row between them.
    """
    import zarr

    root = zarr.open_group(str(map_path), mode="r")
    attrs = dict(root.attrs)
    sample = attrs["sample"]
    group = root[sample]
    if not group.attrs.get("complete"):
        raise HistoflowError(f"sample '{sample}': tile map '{map_path}' is not complete")
    scores, coverage = group["scores"][...], group["coverage"][...]
    blocks_s, blocks_c = [], []
    for i, (h, _) in enumerate(group.attrs["sample_shapes"]):
        if i:
            blocks_s.append(np.zeros((1, scores.shape[2], scores.shape[3]), np.float32))
            blocks_c.append(np.zeros((1, coverage.shape[2]), np.uint8))
        blocks_s.append(scores[i, :h])
        blocks_c.append(coverage[i, :h])
    return np.concatenate(blocks_s), np.concatenate(blocks_c), attrs


def iter_batches(items: Iterable, size: int):
    """Consecutive lists of at most `size` items (the last may be shorter)."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
