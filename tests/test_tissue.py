"""Tissue masking: accuracy on generated slides with known tissue, and sanity on the real slide."""

import json

import numpy as np
import pytest
from histoflow import tissue
from histoflow.errors import SlideError
from histoflow.io.mask_files import read_mask, write_mask_files
from histoflow.slide import open_slide
from histoflow.synthetic.tissue import tissue_blocks
from histoflow.synthetic.writers import write_png, write_pyramidal_tiff
from histoflow.tissue import MaskOptions, compute_tissue_mask
from PIL import Image

MPP = 0.5


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def truth_at(mask_shape, truth):
    img = Image.fromarray(truth.astype(np.uint8) * 255)
    return np.asarray(img.resize(mask_shape[::-1], Image.BOX)) >= 128


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    rgb, truth = tissue_blocks(4000, 3200, seed=2)
    path = write_pyramidal_tiff(tmp_path_factory.mktemp("gen") / "blocks.tif", rgb, mpp=MPP)
    return path, truth


@pytest.mark.parametrize("channel", ["saturation", "od", "gray"])
def test_generated_tissue_iou(generated, channel):
    path, truth = generated
    opts = MaskOptions.from_config({"channel": channel})
    with open_slide(path, sample="gen") as slide:
        result = compute_tissue_mask(slide, opts)
    expected = truth_at(result.mask.shape, truth)
    assert iou(result.mask, expected) >= 0.95
    true_mm2 = truth.sum() * MPP**2 / 1e6
    assert result.meta["tissue_area_mm2"] == pytest.approx(true_mm2, rel=0.05)


def test_physical_units_give_same_mask_at_any_resolution(generated):
    path, _truth = generated
    with open_slide(path) as slide:
        coarse = compute_tissue_mask(slide, MaskOptions.from_config({"thumbnail_mpp": 8.0}))
        fine = compute_tissue_mask(slide, MaskOptions.from_config({"thumbnail_mpp": 2.0}))
    assert coarse.meta["tissue_area_mm2"] == pytest.approx(fine.meta["tissue_area_mm2"], rel=0.03)


def test_real_slide_mask(demo_slide, tmp_path):
    with open_slide(demo_slide, sample="cmu") as slide:
        result = compute_tissue_mask(slide, MaskOptions.from_config())
    mask = result.mask
    h, w = mask.shape
    # Glass at all four corners of CMU-1-Small-Region (the tissue strip runs top to bottom
    # through the middle and touches the bottom edge between ~20% and ~85% of the width).
    k = max(3, h // 20)
    for corner in (mask[:k, :k], mask[:k, -k:], mask[-k:, :k], mask[-k:, -k:]):
        assert not corner.any()
    # The strip covers about a third of the field on visual inspection of the slide;
    # anything outside 25-55% means glass was taken as tissue or tissue was lost.
    assert 0.25 <= result.meta["tissue_fraction"] <= 0.55
    # Thick epithelium in the centre is tissue.
    assert mask[h // 2 - 2 : h // 2 + 3, w // 2 - 2 : w // 2 + 3].all()
    out = {n: tmp_path / n for n in ("mask.png", "thumb.png", "overlay.png", "mask.json")}
    write_mask_files(result, *out.values())
    back, meta = read_mask(out["mask.png"], out["mask.json"])
    assert np.array_equal(back, mask)
    assert meta["slide_dimensions"] == [2220, 2967] and meta["mpp_source"] == "file"
    assert meta["mask_scale"][0] == pytest.approx(2220 / w)
    overlay = np.asarray(Image.open(out["overlay.png"]))
    assert max(overlay.shape[:2]) == 1024
    assert (np.all(overlay == (0, 200, 0), axis=-1)).sum() > 1000  # the outline is drawn
    assert not list(tmp_path.glob(".*tmp*"))  # no temporaries left


def test_blank_slide_gives_empty_mask_and_warning(tmp_path, caplog):
    rng = np.random.default_rng(0)
    blank = np.clip(245 + rng.normal(0, 3, (800, 600, 3)), 0, 255).astype(np.uint8)
    path = write_png(tmp_path / "blank.png", blank)
    with open_slide(path, sample="blank", mpp=0.5) as slide:
        result = compute_tissue_mask(slide, MaskOptions.from_config())
    assert not result.mask.any()
    assert result.meta["tissue_fraction"] == 0 and result.meta["warnings"] == ["no tissue found"]
    assert "sample 'blank': no tissue found" in caplog.text


def test_user_mask_overrides(tmp_path, demo_slide):
    user = np.zeros((2967 // 10, 2220 // 10), np.uint8)
    user[100:200, 50:150] = 1
    Image.fromarray(user).save(tmp_path / "user.png")
    with open_slide(demo_slide, sample="cmu") as slide:
        result = compute_tissue_mask(
            slide, MaskOptions.from_config(), user_mask=tmp_path / "user.png"
        )
    assert result.meta["method"] == "user"
    assert result.meta["tissue_fraction"] == pytest.approx(100 * 100 / user.size, rel=0.05)


def test_user_mask_with_wrong_aspect_is_rejected(tmp_path, demo_slide):
    Image.fromarray(np.ones((100, 300), np.uint8)).save(tmp_path / "wide.png")
    aspect = r"sample 'cmu', file '.*wide\.png': user mask aspect"
    with open_slide(demo_slide, sample="cmu") as slide, pytest.raises(SlideError, match=aspect):
        compute_tissue_mask(slide, MaskOptions.from_config(), user_mask=tmp_path / "wide.png")


def test_mask_json_is_deterministic(tmp_path, demo_slide):
    paths = []
    for run in ("a", "b"):
        d = tmp_path / run
        with open_slide(demo_slide, sample="cmu") as slide:
            result = compute_tissue_mask(slide, MaskOptions.from_config())
        files = [d / n for n in ("m.png", "t.png", "o.png", "m.json")]
        write_mask_files(result, *files)
        paths.append(files)
    for a, b in zip(*paths):
        assert a.read_bytes() == b.read_bytes()
    assert json.loads(paths[0][3].read_text())["method"] == "otsu"


def test_strip_channels_equal_skimage_whole_image():
    from skimage import color as skcolor
    from skimage import morphology as skmorph

    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (tissue.STRIP_ROWS * 2 + 37, 301, 3), dtype=np.uint8)
    rgb[:4] = 0  # black: 0 / 0 saturation
    rgb[4:8] = 200  # grey: delta 0
    ref = skcolor.rgb2hsv(rgb.astype(np.float32) / 255.0)[..., 1]
    sat = tissue.stain_channel(rgb, "saturation")
    assert sat.dtype == np.float32 and np.array_equal(sat.view(np.uint32), ref.view(np.uint32))
    od = -np.log(np.clip(rgb.astype(np.float32) / 255.0, 1 / 255, 1.0))
    np.testing.assert_array_equal(
        tissue.stain_channel(rgb, "od"), np.clip(od.mean(axis=-1) / 1.5, 0.0, 1.0)
    )
    blobs = rng.random((tissue.STRIP_ROWS + 90, 200)) > 0.6
    for size in (1, 5, 40):
        np.testing.assert_array_equal(
            tissue.remove_small_objects(blobs, size),
            skmorph.remove_small_objects(blobs, max_size=size),
        )
