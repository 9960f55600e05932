"""End to end through Snakemake: one cohort of the demo slide and plain images (PNG crop,
JPEG crop, multi-page TIFF stack) through a TorchScript tile classifier, with every
per-tile format and both heatmaps. One run, as each infer_tiles job pays for a torch
import."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import tifffile
import torch
import yaml
import zarr
from conftest import run_workflow
from histoflow.synthetic.tissue import tissue_blocks
from histoflow.tiles.default_model import StainClasses
from histoflow.tiles.model import load_tile_card
from PIL import Image

pytestmark = pytest.mark.e2e

MEMBERS = ("features", "coords", "tissue_ratio", "thumbnail", "tissue_mask")


def read_store(path) -> dict:
    """One per-tile store, read with its own library; the same dict for every format."""
    path = str(path)
    if path.endswith(".h5"):
        with h5py.File(path, "r") as f:
            out = {k: f[k][()] for k in MEMBERS}
            out["metadata"] = json.loads(f.attrs["metadata"])
    elif path.endswith(".zarr"):
        g = zarr.open_group(path, mode="r")
        out = {k: g[k][...] for k in MEMBERS}
        out["metadata"] = g.attrs["metadata"]
    else:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in MEMBERS}
            out["metadata"] = json.loads(str(z["metadata"]))
    return out


def grid_cells(coords, meta):
    """(row, col) of each tile from its level-0 corner."""
    step = meta["patch_size"] * meta["downsample"][0]
    return np.rint(np.asarray(coords, np.float64) / step).astype(int)[:, ::-1]


def check_map_matches_features(map_path, sample, features, coords, meta):
    root = zarr.open_group(str(map_path), mode="r")
    group = root[sample]
    assert group.attrs["complete"] is True
    scores, coverage = group["scores"][...], group["coverage"][...]
    assert int(coverage.sum()) == len(features)
    for page in meta["pages"]:
        rows = slice(page["first_row"], page["first_row"] + page["num_tiles"])
        cells = grid_cells(coords[rows], meta)
        got = scores[page["sample"], cells[:, 0], cells[:, 1]]
        np.testing.assert_array_equal(got, features[rows])
    return root


CLASSES = ["background", "eosin_rich", "hematoxylin_rich"]
STACK_SHAPES = [(500, 480), (700, 600), (300, 700)]  # (h, w) of the pages


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, demo_slide):
    from histoflow.slide import open_slide

    work = tmp_path_factory.mktemp("tiles-cohort")
    data = work / "data"
    data.mkdir()
    Image.fromarray(tissue_blocks(700, 600, seed=3)[0]).save(data / "roi.png")
    with open_slide(demo_slide) as s:
        crop = s.read_region(600, 900, 520, 470, 0.5)
    Image.fromarray(crop).save(data / "crop.jpg", quality=95)
    with tifffile.TiffWriter(data / "stack.tif") as tw:
        for seed, (h, w) in enumerate(STACK_SHAPES):
            tw.write(tissue_blocks(h, w, seed=seed)[0], photometric="rgb")
    # A TorchScript tile classifier with its own card: the built-in heuristic, scripted.
    models = work / "models"
    models.mkdir()
    torch.jit.script(StainClasses()).save(models / "classes.pt")
    card = {**load_tile_card("builtin:stain_classes").card, "name": "ts-classes"}
    card["source"] = {"torchscript": "classes.pt"}
    (models / "classes.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    samples = [{"sample": "CMU", "path": demo_slide}]
    for name, file in [("roi", "roi.png"), ("jpg", "crop.jpg"), ("stack", "stack.tif")]:
        samples.append({"sample": name, "path": data / file, "mpp": 0.5})
    run_workflow(
        work,
        samples=samples,
        config={
            "stages": ["tiles"],
            "tiles": {
                "model": str(models / "classes.yaml"),
                "formats": ["hdf5", "zarr", "npz"],
                "heatmap": ["ometiff", "png"],
                "write_strategy": "write_image",
                "min_tissue_fraction": 0.1,
                "num_workers": 1,
                "batch_size": 16,
            },
        },
    )
    return work / "results"


@pytest.mark.parametrize("sample", ["CMU", "roi", "jpg", "stack"])
def test_same_content_in_zarr_hdf5_and_npz(cohort, sample):
    out = cohort / sample / "tiles"
    stores = {ext: read_store(out / f"{sample}.{ext}") for ext in ("h5", "zarr", "npz")}
    ref = stores["h5"]
    n = len(ref["features"])
    assert n > 0 and ref["features"].shape == (n, 3) and ref["features"].dtype == np.float32
    np.testing.assert_allclose(ref["features"].sum(1), 1.0, rtol=1e-5)  # softmax scores
    assert ref["tissue_ratio"].min() >= 0.1 and ref["tissue_ratio"].max() <= 1.0
    for got in stores.values():
        for key in MEMBERS:
            np.testing.assert_array_equal(got[key], ref[key])
        assert got["metadata"] == ref["metadata"]
    meta = ref["metadata"]
    assert meta["model"] == "ts-classes" and len(meta["weights_sha256"]) == 64
    assert [c["name"] for c in meta["classes"]] == CLASSES
    # The thumbnail and mask are mask_tissue's.
    thumb = np.asarray(Image.open(cohort / sample / "mask" / "thumbnail.png"))
    np.testing.assert_array_equal(ref["thumbnail"], thumb[..., :3])
    mask = np.asarray(Image.open(cohort / sample / "mask" / "mask.png"))
    np.testing.assert_array_equal(ref["tissue_mask"] > 0, mask > 0)
    root = check_map_matches_features(
        out / "map.zarr", sample, ref["features"], ref["coords"], meta
    )
    # Slides stream into the map; plain images use the configured strategy.
    expected = "write_tiles_zarr" if sample == "CMU" else "write_image"
    assert root.attrs["write_strategy"] == expected
    summary = json.loads((out / "tiles.json").read_text())
    assert summary["num_tiles"] == n and summary["formats"] == ["hdf5", "zarr", "npz"]


def test_demo_slide_metadata(cohort):
    meta = read_store(cohort / "CMU" / "tiles" / "CMU.h5")["metadata"]
    assert meta["slide_format"] == "aperio" and meta["patch_size"] == 224
    assert meta["pages"][0]["grid_shape"] == [14, 10]  # 2220 x 2967 px at 0.499 -> 0.5 µm/px
    assert meta["pages"][0]["num_tiles"] > 20


def test_classifier_heatmaps(cohort):
    h5 = read_store(cohort / "CMU" / "tiles" / "CMU.h5")
    rows, cols = h5["metadata"]["pages"][0]["grid_shape"]
    with tifffile.TiffFile(cohort / "CMU" / "export" / "CMU.tiles.ome.tif") as tif:
        assert tif.is_ome
        heat = tif.series[0].asarray()
        ome = tif.ome_metadata
    assert heat.shape == (3, rows, cols) and heat.dtype == np.uint8
    assert "scores: hematoxylin_rich" in ome
    cells = grid_cells(h5["coords"], h5["metadata"])
    expected = np.rint(h5["features"] * 255).astype(np.uint8)
    np.testing.assert_array_equal(heat[:, cells[:, 0], cells[:, 1]].T, expected)
    for sample in ("CMU", "stack"):
        png = np.asarray(Image.open(cohort / sample / "export" / f"{sample}.tiles.png"))
        assert png.ndim == 3 and max(png.shape[:2]) >= 512


def test_plain_images_are_images_with_one_sample(cohort):
    for sample in ("roi", "jpg"):
        meta = read_store(cohort / sample / "tiles" / f"{sample}.h5")["metadata"]
        assert meta["slide_format"] == "image" and len(meta["pages"]) == 1
        assert meta["level0_mpp"] == 0.5 and meta["patch_size_level0"] == 224


def test_multi_page_tiff_pages_are_samples_of_one_image(cohort):
    out = cohort / "stack" / "tiles"
    h5 = read_store(out / "stack.h5")
    pages = h5["metadata"]["pages"]
    assert [p["page"] for p in pages] == [0, 1, 2]
    assert [p["dimensions"] for p in pages] == [[w, h] for h, w in STACK_SHAPES]
    assert pages[0]["first_row"] == 0
    assert sum(p["num_tiles"] for p in pages) == len(h5["features"])
    for p in pages:
        assert p["num_tiles"] > 0
        rows = slice(p["first_row"], p["first_row"] + p["num_tiles"])
        w, h = p["dimensions"]
        assert (h5["coords"][rows][:, 0] < w).all() and (h5["coords"][rows][:, 1] < h).all()
    group = zarr.open_group(str(out / "map.zarr"), mode="r")["stack"]
    assert group["scores"].shape[:3] == (3, 4, 4)  # pages padded to the largest grid (700 px)
    assert group.attrs["sample_shapes"] == [p["grid_shape"] for p in pages]
