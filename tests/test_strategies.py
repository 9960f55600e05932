"""Write strategies: shuffled tiles, small batches, each image written once and equal to
the prediction of the untiled image."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from histoflow.errors import HistoflowError
from histoflow.tiles.strategies import (
    CacheTiles,
    ImageSpec,
    StrategyName,
    TileInfo,
    WriteImage,
    WriteTilesZarr,
    ZarrImageSink,
    iter_batches,
    make_strategy,
    read_grid_map,
    read_image,
)

TILE = 16


def model(rgb: np.ndarray) -> np.ndarray:
    """A per-pixel 'model': prediction of a tile = the same pixels of the whole-image prediction."""
    x = rgb.astype(np.float32) / 255
    return np.stack([x.mean(-1), x[..., 0] * 2 - x[..., 1], np.sin(7 * x[..., 2])], -1)


def make_images(seed: int) -> dict[str, list[np.ndarray]]:
    """Three images; one has three samples (pages) of different sizes, with ragged edges."""
    rng = np.random.default_rng(seed)
    sizes = {"roi-a": [(40, 53)], "stack": [(37, 30), (16, 64), (50, 21)], "roi-b": [(16, 16)]}
    return {
        name: [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]
        for name, shapes in sizes.items()
    }


def tiles_of(images, stride=TILE):
    """(prediction, info) for every tile of every sample; edge tiles are clipped."""
    out = []
    for name, samples in images.items():
        for s, rgb in enumerate(samples):
            h, w = rgb.shape[:2]
            # Overlapping grids (stride < TILE) keep whole tiles only.
            last_y, last_x = (h, w) if stride == TILE else (h - TILE + 1, w - TILE + 1)
            for y in range(0, last_y, stride):
                for x in range(0, last_x, stride):
                    crop = rgb[y : y + TILE, x : x + TILE]
                    out.append((model(crop), TileInfo(name, s, y, x)))
    return out


def specs_of(images, tiles):
    counts = {}
    for _, info in tiles:
        counts[(info.image, info.sample)] = counts.get((info.image, info.sample), 0) + 1
    return {
        name: ImageSpec(
            shapes=tuple(rgb.shape[:2] for rgb in samples),
            tiles=tuple(counts.get((name, s), 0) for s in range(len(samples))),
            channels=3,
        )
        for name, samples in images.items()
    }


class Recorder:
    """A sink that keeps what it is given and when (which batch)."""

    def __init__(self):
        self.calls = []
        self.batch = -1

    def __call__(self, image):
        self.calls.append((image.image, self.batch, image.scores.copy(), image.coverage.copy()))


def feed(strategy, tiles, batch_size, recorder=None, completions=None):
    """Feed batches; return, per image, the index of the batch carrying its last tile."""
    last = {}
    for b, batch in enumerate(iter_batches(tiles, batch_size)):
        for _, info in batch:
            last[info.image] = b
        if recorder is not None:
            recorder.batch = b
        strategy.add([p for p, _ in batch], [i for _, i in batch])
        if completions is not None:
            completions.extend((name, b) for name in strategy.written[len(completions) :])
    strategy.finish()
    return last


def check_equal_to_untiled(scores, coverage, samples):
    for s, rgb in enumerate(samples):
        h, w = rgb.shape[:2]
        np.testing.assert_array_equal(scores[s, :h, :w], model(rgb))
        assert (coverage[s, :h, :w] >= 1).all()
        # Padding of smaller samples: no tile, zero scores.
        assert not coverage[s, h:].any() and not coverage[s, :, w:].any()
        assert not scores[s, h:].any() and not scores[s, :, w:].any()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("cls", [CacheTiles, WriteImage])
def test_cached_strategies_write_each_image_once_when_complete(cls, seed):
    images = make_images(seed)
    tiles = tiles_of(images)
    np.random.default_rng(seed).shuffle(tiles)
    n_samples = sum(len(s) for s in images.values())
    batch = n_samples - 3  # smaller than the number of samples
    rec = Recorder()
    strategy = cls(specs_of(images, tiles), rec)
    last = feed(strategy, tiles, batch, recorder=rec)
    assert sorted(name for name, *_ in rec.calls) == sorted(images)  # exactly once each
    for name, b, scores, coverage in rec.calls:
        assert b == last[name]  # not before its last tile, and not later
        check_equal_to_untiled(scores, coverage, images[name])


@pytest.mark.parametrize(
    ("seed", "chunks", "cache_chunks"),
    # Chunks not aligned with tiles and a one-chunk cache force evictions and re-reads.
    [(0, (TILE, TILE), None), (3, (24, 40), 1), (4, (8, 8), 3)],
)
def test_write_tiles_zarr_marks_each_image_complete_once(seed, chunks, cache_chunks):
    images = make_images(seed)
    tiles = tiles_of(images)
    np.random.default_rng(seed).shuffle(tiles)
    root = zarr.create_group(store=zarr.storage.MemoryStore(), zarr_format=3)
    done = []
    strategy = WriteTilesZarr(specs_of(images, tiles), root, chunks, cache_chunks=cache_chunks)
    strategy.on_complete = lambda name: done.append((name, root[name].attrs["complete"]))
    last = feed(strategy, tiles, 4)
    assert sorted(n for n, _ in done) == sorted(images)
    assert all(flag for _, flag in done)
    assert [n for n, _ in done] == sorted(images, key=lambda n: last[n])
    for name, samples in images.items():
        check_equal_to_untiled(*read_image(root, name), samples)


def test_three_strategies_give_identical_stores():
    images = make_images(5)
    tiles = tiles_of(images)
    np.random.default_rng(5).shuffle(tiles)
    stores = {}
    for name in StrategyName:
        root = zarr.create_group(store=zarr.storage.MemoryStore(), zarr_format=3)
        feed(make_strategy(name, specs_of(images, tiles), root, chunks=(TILE, TILE)), tiles, 5)
        stores[name] = {k: read_image(root, k) for k in images}
    ref = stores[StrategyName.CACHE_TILES]
    for got in stores.values():
        for k in images:
            np.testing.assert_array_equal(got[k][0], ref[k][0])
            np.testing.assert_array_equal(got[k][1], ref[k][1])


def test_overlapping_tiles_average_and_cache_tiles_is_order_independent():
    images = {"o": [np.random.default_rng(9).integers(0, 256, (48, 48, 3), dtype=np.uint8)]}
    tiles = tiles_of(images, stride=8)  # every interior pixel covered by up to 4 tiles
    results = []
    for seed in (0, 1):
        shuffled = list(tiles)
        np.random.default_rng(seed).shuffle(shuffled)
        rec = Recorder()
        feed(CacheTiles(specs_of(images, tiles), rec), shuffled, 7)
        results.append(rec.calls[0])
        rec2 = Recorder()
        feed(WriteImage(specs_of(images, tiles), rec2), shuffled, 7)
        np.testing.assert_allclose(rec2.calls[0][2], rec.calls[0][2], rtol=1e-6)
    np.testing.assert_array_equal(results[0][2], results[1][2])  # bitwise, any order
    assert results[0][3].max() == 4
    np.testing.assert_allclose(results[0][2][0], model(images["o"][0]), rtol=1e-6)


def test_whole_sample_predictions_are_tiles_that_cover_their_sample():
    images = make_images(4)
    whole = [
        (model(rgb), TileInfo(name, s, 0, 0))
        for name, samples in images.items()
        for s, rgb in enumerate(samples)
    ]
    np.random.default_rng(4).shuffle(whole)
    rec = Recorder()
    feed(WriteImage(specs_of(images, whole), rec), whole, 2)
    assert sorted(n for n, *_ in rec.calls) == sorted(images)
    for name, _, scores, coverage in rec.calls:
        check_equal_to_untiled(scores, coverage, images[name])


def test_mistakes_are_refused_with_the_image_named():
    spec = {"a": ImageSpec(shapes=((2, 2),), tiles=(2,), channels=1)}
    rec = Recorder()
    s = CacheTiles(spec, rec)
    one = np.ones((1, 1, 1), np.float32)
    s.add([one], [TileInfo("a", 0, 0, 0)])
    with pytest.raises(ValueError, match=r"'a'.*arrived twice"):
        s.add([one], [TileInfo("a", 0, 0, 0)])
    with pytest.raises(ValueError, match="outside the 2x2 canvas"):
        s.add([one], [TileInfo("a", 0, 2, 0)])
    with pytest.raises(ValueError, match="'a' \\(1 of 2 tiles\\)"):
        s.finish()
    s.add([one], [TileInfo("a", 0, 1, 1)])
    assert [c[0] for c in rec.calls] == ["a"]
    with pytest.raises(ValueError, match="after the image was written"):
        s.add([one], [TileInfo("a", 0, 1, 0)])
    with pytest.raises(ValueError, match="unknown write strategy 'nope'"):
        make_strategy("nope", spec, None)


def test_image_without_tiles_is_written_empty_at_finish():
    spec = {"blank": ImageSpec(shapes=((3, 4),), tiles=(0,), channels=2)}
    root = zarr.create_group(store=zarr.storage.MemoryStore(), zarr_format=3)
    s = WriteImage(spec, ZarrImageSink(root))
    assert s.finish() == ["blank"]
    scores, coverage = read_image(root, "blank")
    assert scores.shape == (1, 3, 4, 2) and not scores.any() and not coverage.any()


def test_grid_map_stacks_samples_with_one_empty_row_between(tmp_path):
    spec = ImageSpec(shapes=((2, 3), (1, 2)), tiles=(2, 1), channels=1)
    root = zarr.create_group(store=str(tmp_path / "map.zarr"), zarr_format=3)
    s = make_strategy(StrategyName.WRITE_TILES_ZARR, {"img": spec}, root)
    s.add(
        np.array([[1.0], [2.0]], np.float32), [TileInfo("img", 0, 0, 0), TileInfo("img", 0, 1, 2)]
    )
    root.attrs["sample"] = "img"
    with pytest.raises(HistoflowError, match="not complete"):
        read_grid_map(tmp_path / "map.zarr")
    s.add(np.array([[3.0]], np.float32), [TileInfo("img", 1, 0, 1)])
    s.finish()
    scores, coverage, attrs = read_grid_map(tmp_path / "map.zarr")
    assert attrs["sample"] == "img" and scores.shape == (4, 3, 1) and coverage.shape == (4, 3)
    want = np.zeros((4, 3), np.float32)
    want[0, 0], want[1, 2], want[3, 1] = 1, 2, 3
    np.testing.assert_array_equal(scores[..., 0], want)
    np.testing.assert_array_equal(coverage, (want > 0).astype(np.uint8))
