"""Tile grid and tissue ratio, multi-page TIFF samples, built-in tile models and cards."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
import yaml
import zarr
from histoflow.errors import ModelError, SlideError
from histoflow.slide import open_slide
from histoflow.tiles.default_model import FEATURE_NAMES, StainClasses, StainStats
from histoflow.tiles.grid import TileGrid
from histoflow.tiles.images import is_page_stack, open_samples
from histoflow.tiles.model import build_tile_model, builtin_cards, load_tile_card
from PIL import Image


# -- grid ------------------------------------------------------------------------------
def brute_ratio(mask, mask_px, grid: TileGrid):
    """Tissue ratio by counting level-0 pixels: mask upsampled by an integer factor."""
    level0 = np.kron(mask.astype(np.uint8), np.ones((mask_px, mask_px), np.uint8))
    step = round(grid.tile_size * grid.scale)
    out = []
    for x, y in grid.level0(grid.origins()):
        out.append(level0[y : y + step, x : x + step].sum() / step**2)
    return np.array(out)


@pytest.mark.parametrize(("mpp", "tile"), [(0.5, 10), (1.0, 5), (2.0, 3)])
def test_tissue_ratio_is_the_exact_area_fraction(mpp, tile):
    rng = np.random.default_rng(0)
    mask = rng.random((11, 15)) > 0.4  # 4 level-0 px per mask px: a 60 x 44 slide
    grid = TileGrid(dimensions=(60, 44), slide_mpp=0.5, mpp=mpp, tile_size=tile, stride=tile)
    got = grid.tissue_ratio(mask, (4.0, 4.0))
    np.testing.assert_allclose(got, brute_ratio(mask, 4, grid), atol=1e-6)
    rows, cols = grid.shape
    assert got.shape == (rows * cols,)
    # The grid covers the slide: the last tile starts inside it.
    w, h = grid.size_at_mpp
    assert (cols - 1) * tile < w <= cols * tile and (rows - 1) * tile < h <= rows * tile


def test_tissue_ratio_with_fractional_mask_scale_matches_supersampling():
    rng = np.random.default_rng(1)
    mask = rng.random((9, 13)) > 0.5
    dims = (101, 70)  # mask_tissue's scale: level-0 size / mask size, not an integer
    scale = (dims[0] / 13, dims[1] / 9)
    grid = TileGrid(dimensions=dims, slide_mpp=0.25, mpp=0.5, tile_size=7, stride=7)
    got = grid.tissue_ratio(mask, scale)
    k = 8  # sub-samples per level-0 pixel and axis
    ys = (np.arange(dims[1] * k) + 0.5) / k
    xs = (np.arange(dims[0] * k) + 0.5) / k
    fine = mask[(ys / scale[1]).astype(int)][:, (xs / scale[0]).astype(int)]
    for (x, y), r in zip(grid.origins() * grid.scale, got):
        x, y = int(x), int(y)
        window = fine[y * k : (y + 14) * k, x * k : (x + 14) * k]
        assert r == pytest.approx(window.sum() / (14 * k) ** 2, abs=0.02)


def test_overlapping_grid_and_level0_coordinates():
    grid = TileGrid(dimensions=(1000, 500), slide_mpp=0.25, mpp=0.5, tile_size=100, stride=75)
    assert grid.scale == 2.0 and grid.tile_size_level0 == 200
    assert grid.shape == (3, 7)  # 250 px high: 0, 75, 150 (+100 = 250); 500 wide: 0..450
    xy = grid.level0(grid.origins())
    assert xy[:3].tolist() == [[0, 0], [150, 0], [300, 0]]
    with pytest.raises(ValueError, match="stride"):
        TileGrid(dimensions=(10, 10), slide_mpp=1, mpp=1, tile_size=4, stride=5)


# -- multi-page TIFF -------------------------------------------------------------------
def test_multi_page_tiff_pages_are_samples_read_like_plain_images(tmp_path):
    rng = np.random.default_rng(2)
    pages = [rng.integers(0, 256, (40 + 10 * i, 50, 3), dtype=np.uint8) for i in range(3)]
    stack = tmp_path / "stack.tif"
    with tifffile.TiffWriter(stack) as tw:
        for p in pages:
            tw.write(p, photometric="rgb")
    single = tmp_path / "one.tif"
    tifffile.imwrite(single, pages[0], photometric="rgb")
    assert is_page_stack(stack) and not is_page_stack(single)
    samples = open_samples(stack, sample="S", mpp=0.5)
    assert [s.dimensions for s in samples] == [(50, 40), (50, 50), (50, 60)]
    for page, s in zip(pages, samples):
        np.testing.assert_array_equal(s.read_region(0, 0, 50, page.shape[0], 0.5), page)
    # Page 0 reads exactly as the slide reader reads the file (what mask_tissue sees).
    with open_slide(stack, mpp=0.5) as whole:
        np.testing.assert_array_equal(
            samples[0].read_region(3, 5, 20, 30, 1.0), whole.read_region(3, 5, 20, 30, 1.0)
        )
    assert len(open_samples(single, mpp=0.5)) == 1
    with pytest.raises(SlideError, match=r"sample 'S'.*'mpp'"):
        open_samples(stack, sample="S")


def test_gray_and_16_bit_pages_become_rgb(tmp_path):
    stack = tmp_path / "gray16.tif"
    gray = np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 100
    with tifffile.TiffWriter(stack) as tw:
        tw.write(gray)
        tw.write(gray)
    rgb = open_samples(stack, mpp=1.0)[1].read_region(0, 0, 30, 20, 1.0)
    expected = np.round(gray / 65535 * 255).astype(np.uint8)
    np.testing.assert_array_equal(rgb, np.repeat(expected[..., None], 3, 2))


# -- built-in models -------------------------------------------------------------------
def test_stain_stats_measure_what_they_say():
    white = torch.ones(1, 3, 32, 32)
    pink = torch.tensor([0.93, 0.55, 0.75]).view(1, 3, 1, 1).expand(1, 3, 32, 32)
    purple = torch.tensor([0.35, 0.2, 0.55]).view(1, 3, 1, 1).expand(1, 3, 32, 32)
    stripes = torch.zeros(1, 3, 32, 32)
    stripes[..., (torch.arange(32) // 2) % 2 == 0] = 1.0  # 2-px black and white bars
    f = dict(zip(FEATURE_NAMES, StainStats()(torch.cat([white, pink, purple, stripes])).T))
    assert f["background_fraction"].tolist()[:3] == [1.0, 0.0, 0.0]
    assert f["optical_density_mean"][0] < 0.01 < f["optical_density_mean"][1]
    # Purple (hematoxylin) has more H per unit E than pink (eosin).
    h_share = f["hematoxylin_od_mean"] / (f["hematoxylin_od_mean"] + f["eosin_od_mean"])
    assert h_share[2] > h_share[1]
    assert f["gradient_energy"][3] > 0.1 and f["gradient_energy"][:3].abs().max() < 1e-6
    assert f["laplacian_variance"][3] > 0.5 and f["laplacian_variance"][:3].max() < 1e-6


def test_stain_classes_on_the_demo_slide(demo_slide):
    with open_slide(demo_slide) as s:
        glass = s.read_region(0, 0, 224, 224, 0.5)
        tissue = s.read_region(1000, 1000, 224, 224, 0.5)
    x = torch.from_numpy(np.stack([glass, tissue])).permute(0, 3, 1, 2).float() / 255
    scores = StainClasses()(x)
    torch.testing.assert_close(scores.sum(1), torch.ones(2))
    assert scores[0].argmax() == 0 and scores[1].argmax() != 0


def test_builtin_cards_load_and_are_scriptable(tmp_path):
    cards = builtin_cards()
    assert set(cards) == {"builtin:stain_stats", "builtin:stain_classes"}
    x = torch.rand(3, 3, 224, 224)
    for name in ("builtin:stain_stats", "builtin:stain_classes"):
        card = load_tile_card(name)
        model = build_tile_model(card)
        out = model(x)
        assert out.shape == (3, card.dim) and card.weights_sha256() is None
        # The same module as TorchScript, through a card of its own.
        torch.jit.script(model).save(tmp_path / "m.pt")
        ts_card = {**card.card, "name": "ts", "source": {"torchscript": "m.pt"}}
        (tmp_path / "ts.yaml").write_text(yaml.safe_dump(ts_card))
        ts = load_tile_card(tmp_path / "ts.yaml")
        torch.testing.assert_close(build_tile_model(ts)(x), out)
        assert len(ts.weights_sha256()) == 64


def test_bad_cards_name_the_field(tmp_path):
    card = load_tile_card("builtin:stain_classes").card
    for field, change in [
        ("output.classes", {"output": {**card["output"], "classes": [{"name": "a"}]}}),
        ("output.type", {"output": {**card["output"], "type": "map"}}),
        ("patch_input", {"patch_input": [224, 112]}),
        ("source", {"source": {}}),
        ("source.torchscript", {"source": {"torchscript": "x.pt"}}),
    ]:
        (tmp_path / "c.yaml").write_text(yaml.safe_dump({**card, **change}))
        with pytest.raises(ModelError, match=f"field '{field}'"):
            load_tile_card(tmp_path / "c.yaml")
    with pytest.raises(ModelError, match=r"field 'kind'.*needs a tile model"):
        load_tile_card("builtin:hed_nuclei")  # a dense card
    with pytest.raises(ModelError, match=r"'builtin:nope' not found.*builtin:stain_stats"):
        load_tile_card("builtin:nope")


def test_model_not_matching_its_card_is_refused(tmp_path):
    torch.jit.script(StainStats()).save(tmp_path / "m.pt")
    card = {**load_tile_card("builtin:stain_classes").card, "source": {"torchscript": "m.pt"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(card))
    with pytest.raises(ModelError, match=r"gives \(2, 12\).*'output.dim' says \(2, 3\)"):
        build_tile_model(load_tile_card(tmp_path / "c.yaml"))


def test_png_crop_is_one_sample(tmp_path):
    png = tmp_path / "crop.png"
    Image.fromarray(np.full((30, 40, 3), 200, np.uint8)).save(png)
    (only,) = open_samples(png, mpp=0.5)
    assert only.dimensions == (40, 30)


def test_plain_image_map_is_the_same_with_every_write_strategy(tmp_path):
    from histoflow.io.mask_files import write_mask_files
    from histoflow.slide import open_slide
    from histoflow.synthetic.tissue import tissue_blocks
    from histoflow.tiles.infer import TileOptions, run
    from histoflow.tissue import MaskOptions, compute_tissue_mask

    png = tmp_path / "roi.png"
    Image.fromarray(tissue_blocks(300, 260, seed=5)[0]).save(png)
    with open_slide(png, sample="roi", mpp=1.0) as slide:
        result = compute_tissue_mask(slide, MaskOptions.from_config())
    names = ("mask.png", "thumbnail.png", "overlay.png", "mask.json")
    write_mask_files(result, *(tmp_path / n for n in names))
    card = load_tile_card("builtin:stain_classes")
    maps = {}
    for strategy in ("cache_tiles", "write_image", "write_tiles_zarr"):
        out = tmp_path / strategy
        opts = TileOptions.from_config(
            {"formats": ["npz"], "write_strategy": strategy, "tile_size": 32, "num_workers": 0}
        )
        run(
            sample="roi",
            slide_path=str(png),
            sheet_mpp=1.0,
            mask_png=str(tmp_path / "mask.png"),
            thumbnail_png=str(tmp_path / "thumbnail.png"),
            mask_json=str(tmp_path / "mask.json"),
            card=card,
            opts=opts,
            outputs={"npz": str(out / "roi.npz")},
            map_path=str(out / "map.zarr"),
            summary_path=str(out / "tiles.json"),
        )
        group = zarr.open_group(str(out / "map.zarr"), mode="r")
        assert group.attrs["write_strategy"] == strategy
        maps[strategy] = (group["roi/scores"][...], group["roi/coverage"][...])
        with np.load(out / "roi.npz") as z:
            features, coords = z["features"], z["coords"]
        # 32 px tiles at 0.5 µm/px on a 1 µm/px image: 16 level-0 px per cell.
        cells = coords[:, ::-1] // 16
        np.testing.assert_array_equal(maps[strategy][0][0, cells[:, 0], cells[:, 1]], features)
        assert maps[strategy][1].sum() == len(features) > 10
    for scores, coverage in maps.values():
        np.testing.assert_array_equal(scores, maps["cache_tiles"][0])
        np.testing.assert_array_equal(coverage, maps["cache_tiles"][1])


def test_sheet_for_a_folder_of_rois_validates(tmp_path):
    from histoflow.config import load_sample_sheet
    from histoflow.tiles.sheet import sheet_rows, to_tsv

    rois = tmp_path / "rois"
    rois.mkdir()
    for name in ("b roi.png", "a.jpg", "a.tif", "notes.txt"):
        (rois / name).write_bytes(b"x")
    rows = sheet_rows(rois, mpp=0.25)
    assert [r["sample"] for r in rows] == ["a", "a-2", "b_roi"]
    (tmp_path / "s.tsv").write_text(to_tsv(rows))
    sheet = load_sample_sheet(tmp_path / "s.tsv")
    assert list(sheet.index) == ["a", "a-2", "b_roi"] and set(sheet["mpp"]) == {0.25}
