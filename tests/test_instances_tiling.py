"""Tile invariance of extract_instances (DESIGN.md property 2).

Synthetic maps carry objects centred on tile seams, at tile corners, on margin lines,
with an edge exactly on a window edge, half outside the slide and in touching pairs
across seams. Tiled post-processing must match the whole-map pass object for object.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely
import zarr
from histoflow.instances import InstancesOptions, evaluate, extract, run
from histoflow.io.instance_table import build_table
from histoflow.synthetic import maps as sm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SHAPE = (448, 576)  # not a multiple of the tile: the last row and column are partial
TILE = 128
MARGIN = 24
PATCH = (64, 64)
WATERSHED_HEADS = {"nuc": "probability", "energy": "energy"}
# min_distance 1.5 µm = 3 px at 0.5 mpp: halo 4, so objects up to 21 px are guaranteed.
WATERSHED_PARAMS = {"min_distance_um": 1.5, "min_area_um2": 2.0}


def opts(tile_shape, margin=64, workers=1, executor="process"):
    """Options of the `instances` section with these values (one worker unless asked)."""
    return InstancesOptions.from_config(
        {"tile_shape": tile_shape, "margin": margin, "workers": workers, "executor": executor}
    )


class Placer:
    """Collects ellipse rows for `sm.make_objects`, drawing sizes from one generator."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.rows: list[tuple] = []

    def add(self, cx, cy, r=None, pair=False):
        rng = self.rng
        r = r if r is not None else rng.uniform(3, 8)
        ry = r * rng.uniform(0.6, 1.0)
        self.rows.append((cx, cy, r, ry, rng.uniform(0, math.pi), 0))
        if pair:  # a touching twin on the other side of the line, along x or y
            ang = rng.choice([0.0, math.pi / 2])
            d = r + 4.5
            self.rows.append((cx + d * math.cos(ang), cy + d * math.sin(ang), 4.5, 4.0, ang, 0))


def _on_seams(p: Placer, seams_x, seams_y, h, w):
    for x in seams_x:
        for y in np.arange(20, h - 10, 45):
            p.add(x + p.rng.choice([-0.5, 0.0, 0.5]), y + p.rng.uniform(-3, 3))
        for y in np.arange(42, h - 10, 90):
            p.add(x - 3.0, y, pair=True)
    for y in seams_y:
        for x in np.arange(40, w - 10, 45):
            p.add(x + p.rng.uniform(-3, 3), y + p.rng.choice([-0.5, 0.0, 0.5]))
    for x in seams_x:  # tile corners
        for y in seams_y:
            p.add(x, y, r=7.5)


def _on_margin_lines(p: Placer, seams_x, seams_y, h, w, margin):
    for x in seams_x:  # centred on margin lines
        for y in np.arange(65, h - 10, 90):
            p.add(x + margin, y)
            p.add(x - margin, y + 20)
    for y in seams_y:
        for x in np.arange(65, w - 10, 90):
            p.add(x, y - margin)
            p.add(x + 20, y + margin)
    for x in seams_x:  # left edge exactly on the window's left edge of the next tile
        p.add(x - margin + 6.0, 100.0, r=6.0)


def _on_slide_edges(p: Placer, h, w):
    for x, y in [(0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1), (0, 200), (w - 1, 300)]:
        p.add(x, y)  # half (or three quarters) outside the slide
    for y in (0.0, h - 1.0):
        for x in np.arange(30, w - 10, 60):
            p.add(x, y)


def _without_overlaps(objs: np.ndarray) -> np.ndarray:
    """Drop any accidental overlap (designed pairs touch but do not overlap by more)."""
    keep = np.ones(len(objs), bool)
    for i in range(len(objs)):
        for j in np.flatnonzero(keep[:i]):
            d = math.hypot(objs["cx"][i] - objs["cx"][j], objs["cy"][i] - objs["cy"][j])
            if d < objs["rx"][i] + objs["rx"][j] - 1.0:
                keep[i] = False
                break
    return objs[keep]


def placed_objects(shape=SHAPE, tile=TILE, margin=MARGIN, seed=0) -> np.ndarray:
    """Ellipses (radius 3-8 px) on every kind of line, plus filler; none overlap except
    designed touching pairs."""
    h, w = shape
    seams_x = list(range(tile, w, tile))
    seams_y = list(range(tile, h, tile))
    p = Placer(seed)
    _on_seams(p, seams_x, seams_y, h, w)
    _on_margin_lines(p, seams_x, seams_y, h, w, margin)
    _on_slide_edges(p, h, w)
    return _without_overlaps(sm.make_objects(p.rows))


def geoms(objects):
    return shapely.from_wkb(objects.contour)


@pytest.fixture(scope="module")
def watershed_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("inst") / "maps.zarr"
    objs = placed_objects()
    card = sm.card("watershed", WATERSHED_HEADS, params=WATERSHED_PARAMS, patch_output=PATCH)
    sm.write_maps(path, objs, SHAPE, card, WATERSHED_HEADS, band_rows=64, scale=2.0)
    return path, objs


@pytest.fixture(scope="module")
def watershed_runs(watershed_store):
    path, objs = watershed_store
    tiled = extract(path, opts(tile_shape=(TILE, TILE), margin=MARGIN))
    whole = extract(path, opts(tile_shape=None))
    return tiled, whole, objs


def test_watershed_tiled_equals_whole_map(watershed_runs):
    (t_objs, _, t_stats), (w_objs, _, _), _ = watershed_runs
    tiled, whole = geoms(t_objs[0][2]), geoms(w_objs[0][2])
    assert t_stats.tiles == 20 and len(tiled) > 150
    m = evaluate.match(tiled, whole, iou=0.5)
    assert m.f1 == 1.0, m
    assert m.mean_iou > 0.9999  # same outlines, not merely overlapping ones: none is cut
    assert evaluate.duplicates(tiled, iou=0.3) == 0
    assert t_stats.truncated["nuclei"] == 0 and t_stats.conflicts["nuclei"] == 0


def test_whole_map_finds_the_ground_truth(watershed_runs):
    """The post-processor itself: every placed ellipse (touching twins included) once."""
    _, (w_objs, _, _), objs = watershed_runs
    truth = sm.render(objs, (0, SHAPE[0], 0, SHAPE[1]))["labels"]
    m = evaluate.match(geoms(w_objs[0][2]), evaluate.label_polygons(truth, scale=2.0))
    assert m.f1 == 1.0, m
    assert m.mean_iou > 0.95


def test_objects_are_in_level0_pixels(watershed_runs):
    """scale = 2: a ~6 px radius ellipse at (cx, cy) model px is near (2cx+1, 2cy+1)."""
    (_, meta, _), (w_objs, _, _), objs = watershed_runs
    o = w_objs[0][2]
    inner = (objs["cx"] > 20) & (objs["cx"] < SHAPE[1] - 20) & (objs["cy"] > 20)
    inner &= objs["cy"] < SHAPE[0] - 20
    truth = np.stack([objs["cx"][inner] + 0.5, objs["cy"][inner] + 0.5], 1) * 2.0
    d = np.hypot(*(o.centroid[:, None, :] - truth[None]).transpose(2, 0, 1)).min(0)
    assert np.all(d < 1.0)  # every ground-truth centre has an object within 0.5 model px
    assert meta["scale"] == 2.0 and meta["margin"] == MARGIN
    assert np.all(o.bbox[:, 2] > o.bbox[:, 0]) and np.all(o.area > 0)


def test_results_do_not_depend_on_workers(watershed_store, tmp_path):
    path, _ = watershed_store
    tables = []
    for workers, executor in ((1, "process"), (2, "process"), (2, "thread")):
        out = tmp_path / f"w{workers}-{executor}.parquet"
        run(path, out, options=opts((TILE, TILE), MARGIN, workers, executor))
        tables.append(out.read_bytes())
    assert tables[0] == tables[1] == tables[2]
    table = pq.read_table(tmp_path / "w1-process.parquet")
    assert table.num_rows > 150 and len(set(table["id"].to_pylist())) == table.num_rows


def test_tile_shape_and_margin_do_not_change_the_objects(watershed_store, watershed_runs):
    """Other grids, including a tile shape that is rounded to the patch size."""
    path, _ = watershed_store
    _, (w_objs, _, _), _ = watershed_runs
    whole = geoms(w_objs[0][2])
    for tile, margin in (((192, 256), 30), ((100, 150), 40)):
        objs, meta, _ = extract(path, opts(tile_shape=tile, margin=margin))
        assert all(t % 64 == 0 for t in meta["tile_shape"])
        tiled = geoms(objs[0][2])
        m = evaluate.match(tiled, whole)
        assert m.f1 == 1.0 and m.mean_iou > 0.9999, (tile, m)
        assert evaluate.duplicates(tiled) == 0


def test_object_larger_than_the_margin(tmp_path):
    """Documented limit: an object wider than the margin that its owner's window cannot
    hold is dropped whole (counted as truncated), never cut or duplicated; one that fits
    its owner's window is kept."""
    big_on_seam = (256.0, 200.0, 40.0, 14.0, 0.0, 0)  # 80 px wide across x = 256
    big_fits = (64.0, 60.0, 26.0, 12.0, 0.0, 0)  # 52 px wide, inside tile (0, 0)'s window
    small = (300.0, 330.0, 6.0, 5.0, 0.0, 0)
    objs = sm.make_objects([big_on_seam, big_fits, small])
    card = sm.card("watershed", WATERSHED_HEADS, params=WATERSHED_PARAMS, patch_output=PATCH)
    path = sm.write_maps(tmp_path / "m.zarr", objs, SHAPE, card, WATERSHED_HEADS)
    (t, _, stats), (w, _, _) = (
        extract(path, opts((TILE, TILE), MARGIN)),
        extract(path, opts(tile_shape=None)),
    )
    tiled, whole = geoms(t[0][2]), geoms(w[0][2])
    assert len(whole) == 3
    assert stats.truncated["nuclei"] >= 1  # cut views, one per tile that owned a piece
    m = evaluate.match(tiled, whole)
    assert (m.tp, m.fp, m.fn) == (2, 0, 1) and m.mean_iou > 0.9999
    seam_object = whole[np.argmax(shapely.area(whole))]
    assert not shapely.intersects(tiled, seam_object).any()  # no fragment of it either


def test_hovernet_fixed_tiled_equals_whole_map_and_votes_types(tmp_path):
    heads = {"np": "probability", "hv": "hv", "tp": "type"}
    card = sm.card(
        "hovernet_fixed",
        heads,
        classes=("Background", "Tumour", "Lymphocyte"),
        params={"min_area_um2": 2.0},
        patch_output=PATCH,
    )
    objs = sm.random_nuclei(SHAPE, spacing=24, classes=(1, 2), touching=0.3, seed=3)
    path = sm.write_maps(tmp_path / "hv.zarr", objs, SHAPE, card, heads, band_rows=100)
    (t, _, stats), (w, _, _) = (
        extract(path, opts((TILE, TILE), MARGIN)),
        extract(path, opts(tile_shape=None)),
    )
    tiled, whole = geoms(t[0][2]), geoms(w[0][2])
    m = evaluate.match(tiled, whole)
    assert m.f1 == 1.0 and m.mean_iou > 0.9999, m
    assert evaluate.duplicates(tiled) == 0 and stats.truncated["nuclei"] == 0
    truth = sm.render(objs, (0, SHAPE[0], 0, SHAPE[1]), n_classes=3)["labels"]
    truth_polys = evaluate.label_polygons(truth)
    assert evaluate.match(whole, truth_polys).f1 > 0.97
    # type of each found object = class of the ground-truth object under its centroid
    found = w[0][2]
    cx, cy = found.centroid.T.astype(int)
    expected = np.concatenate([[0], objs["cls"]])[truth[cy, cx]]
    assert np.mean(found.class_id == expected) > 0.98
    assert np.all((found.probability > 0.5) & (found.probability <= 1.0))


def test_semantic_regions_join_across_seams(tmp_path):
    regions = sm.make_objects(
        [
            (150, 150, 120, 80, 0.3, 1),  # spans many tiles
            (420, 300, 140, 90, 0.0, 2),
            (420, 300, 30, 20, 0.0, 0),  # a hole in the stroma region
            (100, 380, 60, 40, 0.0, 2),
            (550, 420, 150, 50, 1.0, 1),  # cut by the slide edge
            (300, 40, 3, 3, 0, 1),  # below min_area: dropped
        ]
    )
    heads = {"tissue": "semantic"}
    card = sm.card(
        "semantic",
        heads,
        classes=("Background", "Tumour", "Stroma"),
        task="tissue",
        params={"ignore_classes": ["Background"], "min_area_um2": 10.0},
        patch_output=PATCH,
    )
    path = sm.write_maps(
        tmp_path / "sem.zarr", regions, SHAPE, card, heads, blank=[(0, 60, 480, 576)]
    )
    (t, _, _), (w, _, _) = (
        extract(path, opts((TILE, TILE), MARGIN), classmap_path=tmp_path / "t.zarr"),
        extract(path, opts(tile_shape=None), classmap_path=tmp_path / "w.zarr"),
    )
    tiled, whole = geoms(t[0][2]), geoms(w[0][2])
    assert len(whole) == 4 and sorted(t[0][2].class_id) == [1, 1, 2, 2]
    m = evaluate.match(tiled, whole)
    assert m.f1 == 1.0 and m.mean_iou > 0.999, m
    assert sorted(t[0][2].area) == sorted(w[0][2].area)  # same pixels
    assert sum(len(g.interiors) for g in tiled) == 1
    cm_t, cm_w = zarr.open_array(tmp_path / "t.zarr"), zarr.open_array(tmp_path / "w.zarr")
    np.testing.assert_array_equal(cm_t[...], cm_w[...])
    assert cm_t.attrs["nodata"] == 255 and (cm_t[0:60, 480:576] == 255).all()
    assert set(np.unique(cm_t[...])) == {0, 1, 2, 255}


def test_table_is_sorted_with_stable_ids(watershed_runs):
    (t_objs, _, _), _, _ = watershed_runs
    table = build_table(t_objs)
    ids = table["id"].to_pylist()
    assert len(set(ids)) == len(ids) and all(i.startswith("nuclei-") for i in ids)
    corners = [tuple(map(int, i.split("-")[1:3])) for i in ids]
    assert corners == sorted(corners)
    row = table.slice(0, 1).to_pylist()[0]
    poly = shapely.from_wkb(row["contour"])
    # the id's corner is the top-left of the box, in model pixels (scale 2)
    assert (corners[0][0] * 2.0, corners[0][1] * 2.0) == (row["bbox_y0"], row["bbox_x0"])
    assert poly.bounds[0] >= row["bbox_x0"] - 1e-9 and poly.bounds[2] <= row["bbox_x1"] + 1e-9


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    tile=st.sampled_from([(64, 64), (64, 128), (128, 64)]),
    margin=st.integers(21, 40),
)
def test_random_layouts_are_tile_invariant(tmp_path_factory, seed, tile, margin):
    shape = (256, 320)
    objs = sm.random_nuclei(shape, spacing=20, radius=(3.0, 7.0), seed=seed)
    card = sm.card("watershed", WATERSHED_HEADS, params=WATERSHED_PARAMS, patch_output=(32, 32))
    path = sm.write_maps(
        tmp_path_factory.mktemp("h") / "m.zarr", objs, shape, card, WATERSHED_HEADS
    )
    (t, _, stats), (w, _, _) = (
        extract(path, opts(tile, margin)),
        extract(path, opts(tile_shape=None)),
    )
    tiled, whole = geoms(t[0][2]), geoms(w[0][2])
    m = evaluate.match(tiled, whole)
    assert m.f1 == 1.0 and m.mean_iou > 0.9999, (seed, tile, margin, m)
    assert evaluate.duplicates(tiled) == 0 and stats.truncated["nuclei"] == 0
