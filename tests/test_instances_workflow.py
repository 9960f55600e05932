"""extract_instances through Snakemake: rule wiring, config, log, benchmark, outputs."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely
import yaml
import zarr
from conftest import run_workflow
from histoflow.instances import InstancesOptions, evaluate, extract
from histoflow.slide import open_slide
from histoflow.synthetic import maps as sm
from PIL import Image

pytestmark = pytest.mark.e2e

HEADS = {"nucleus": "probability", "energy": "energy"}


def test_rule_on_a_seeded_maps_store(tmp_path, demo_slide):
    shape = (400, 520)
    maps = tmp_path / "results" / "s1" / "merge" / "maps.zarr"
    objs = sm.random_nuclei(shape, spacing=26, seed=5)
    card = sm.card("watershed", HEADS, params={"min_area_um2": 2.0}, patch_output=(64, 64))
    # The demo slide is ~0.499 mpp; the model runs at 0.5.
    sm.write_maps(maps, objs, shape, card, HEADS, scale=0.5 / 0.4990, slide_mpp=0.4990)
    run_workflow(
        tmp_path,
        samples=[{"sample": "s1", "path": demo_slide}],
        config={"instances": {"tile_shape": [128, 128], "margin": 32, "workers": 2}},
        # Only this rule: the seeded maps.zarr stands in for merge_patches' output.
        args=["--allowed-rules", "extract_instances", "-p"],
        targets=["results/s1/instances/instances.parquet", "results/s1/instances/overlay.png"],
    )
    out = tmp_path / "results" / "s1" / "instances"
    table = pq.read_table(out / "instances.parquet")
    meta = json.loads(table.schema.metadata[b"histoflow"])
    assert meta["tile_shape"] == [128, 128] and meta["margin"] == 32
    assert meta["tasks"]["nuclei"][0]["name"] == "Nucleus"
    assert table.column_names[:3] == ["id", "task", "class_id"]
    ref, _, _ = extract(maps, InstancesOptions.from_config({"tile_shape": None, "workers": 1}))
    found = shapely.from_wkb(table["contour"].to_numpy(zero_copy_only=False))
    m = evaluate.match(found, shapely.from_wkb(ref[0][2].contour))
    assert m.f1 == 1.0 and m.mean_iou > 0.9999 and table.num_rows > 0.9 * len(objs)
    img = Image.open(out / "overlay.png")
    assert img.mode == "RGB" and img.size == (520, 400)  # the whole (small) map
    with open_slide(demo_slide, mpp=0.4990) as slide:
        plain = slide.read_region(0, 0, 520, 400, 0.5)
    changed = (np.asarray(img) != plain).any(-1).mean()
    assert 0.05 < changed < 0.5  # outlines drawn over the slide, not a blank picture
    log = (tmp_path / "logs" / "extract_instances" / "s1.log").read_text()
    assert "20 tiles of 128x128 + margin 32, 2 worker(s)" in log
    assert f"nuclei: {table.num_rows} objects" in log
    assert (tmp_path / "benchmarks" / "extract_instances" / "s1.tsv").exists()
    assert not (out / "classmap.zarr").exists()  # no semantic task in this card


def test_semantic_card_declares_the_class_map(tmp_path, demo_slide):
    shape = (300, 360)
    maps = tmp_path / "results" / "s1" / "merge" / "maps.zarr"
    regions = sm.make_objects([(150, 120, 90, 60, 0.3, 1), (150, 280, 60, 50, 0.0, 2)])
    heads = {"tissue": "semantic"}
    classes = ("Background", "Tumour", "Stroma")
    params = {"ignore_classes": ["Background"], "min_area_um2": 10.0}
    card = sm.card("semantic", heads, classes, params, task="tissue", patch_output=(64, 64))
    sm.write_maps(maps, regions, shape, card, heads, scale=0.5 / 0.4990, slide_mpp=0.4990)
    # The workflow's card is the one the store was made with, so the rule knows at
    # parse time that this stage writes a class map.
    (tmp_path / "card.yaml").write_text(yaml.safe_dump(card))
    proc = run_workflow(
        tmp_path,
        samples=[{"sample": "s1", "path": demo_slide}],
        config={"model": {"card": str(tmp_path / "card.yaml")}, "stages": ["instances"]},
        args=["--allowed-rules", "extract_instances", "--summary"],
    )
    assert "results/s1/instances/classmap.zarr" in proc.stdout
    run_workflow(
        tmp_path,
        samples=[{"sample": "s1", "path": demo_slide}],
        config={"model": {"card": str(tmp_path / "card.yaml")}, "stages": ["instances"]},
        args=["--allowed-rules", "extract_instances"],
    )
    classmap = zarr.open_array(tmp_path / "results" / "s1" / "instances" / "classmap.zarr")
    assert classmap.shape == shape
    assert set(np.unique(classmap[:])) <= {0, 1, 2}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, demo_slide):
    """mask -> infer -> merge -> extract_instances on the real demo slide, built-in
    model, tiles small enough (512 px) that the slide has 5 x 6 of them."""
    workdir = tmp_path_factory.mktemp("demo")
    run_workflow(
        workdir,
        samples=[{"sample": "demo", "path": demo_slide}],
        config={"instances": {"tile_shape": [512, 512], "margin": 64, "workers": 2}},
        targets=["results/demo/instances/instances.parquet", "results/demo/instances/overlay.png"],
    )
    return workdir / "results" / "demo"


def test_demo_slide_tiled_equals_whole_map(demo_run):
    table = pq.read_table(demo_run / "instances" / "instances.parquet")
    meta = json.loads(table.schema.metadata[b"histoflow"])
    assert meta["model"] == "hed_nuclei" and meta["tile_shape"] == [512, 512]
    tiled = shapely.from_wkb(table["contour"].to_numpy(zero_copy_only=False))
    ref, _, _ = extract(
        demo_run / "merge" / "maps.zarr",
        InstancesOptions.from_config({"tile_shape": None, "workers": 1}),
    )
    whole = shapely.from_wkb(ref[0][2].contour)
    m = evaluate.match(tiled, whole)
    assert len(whole) > 1000
    assert m.f1 >= 0.999, m
    assert evaluate.duplicates(tiled, iou=0.3) == 0
    # the card's area limits (8-400 µm²), in level-0 pixels and the slide's mpp
    area_um2 = table["area_px"].to_numpy() * meta["slide_mpp"] ** 2
    assert area_um2.min() >= 8.0 * 0.99 and area_um2.max() <= 400.0 * 1.01
    assert (table["probability"].to_numpy() >= 0.5).all()


def test_demo_slide_touching_nuclei_are_separated(demo_run):
    """Watershed on the energy map splits clumps: many objects share a boundary with a
    neighbour, which connected components of the foreground alone could not give."""
    table = pq.read_table(demo_run / "instances" / "instances.parquet", columns=["contour"])
    polys = shapely.from_wkb(table["contour"].to_numpy(zero_copy_only=False))
    a, b = shapely.STRtree(polys).query(polys, predicate="dwithin", distance=1.5)
    touching = int((a < b).sum())
    assert touching > 0.05 * len(polys), (touching, len(polys))


def test_demo_overlay_shows_outlines(demo_run):
    img = Image.open(demo_run / "instances" / "overlay.png")
    assert img.mode == "RGB" and max(img.size) <= 1536
    red = np.asarray(img).reshape(-1, 3) == np.array([0xD6, 0x27, 0x28])  # class colour
    assert red.all(1).mean() > 0.01
