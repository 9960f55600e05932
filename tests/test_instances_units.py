"""Units of the instances engine: card tasks, post-processors, tiling, table, overlay."""

from __future__ import annotations

import re

import numpy as np
import pytest
import zarr
from histoflow.config import schema_defaults
from histoflow.errors import ConfigError, HistoflowError, ModelError
from histoflow.instances import InstancesOptions, extract, overlay, postprocess, run, tiling
from histoflow.instances.objects import label_stats, object_polygons
from histoflow.instances.resources import estimate_mem_mb
from histoflow.instances.tasks import tasks_from_card
from histoflow.io.instance_table import object_ids
from histoflow.synthetic import maps as sm

HEADS = {"nuc": "probability", "energy": "energy"}
CHANNELS = {"nuc": 1, "energy": 1, "hv": 2, "tp": 3}


def opts(tile_shape, margin=64, workers=1, executor="process"):
    """Options of the `instances` section with these values (one worker unless asked)."""
    return InstancesOptions.from_config(
        {"tile_shape": tile_shape, "margin": margin, "workers": workers, "executor": executor}
    )


def card_with(**entry):
    card = sm.card("watershed", HEADS)
    card["postprocess"][0].update(entry)
    return card


@pytest.mark.parametrize(
    "entry, field",
    [
        ({"method": "blob"}, "postprocess[0].method"),
        ({"heads": {"probability": "nuc"}}, "postprocess[0].heads"),
        ({"heads": {"probability": "nuc", "energy": "nope"}}, "postprocess[0].heads.energy"),
        ({"params": {"treshold": 0.4}}, "postprocess[0].params"),
        ({"classes": []}, "postprocess[0].classes"),
        ({"task": "a-b"}, "postprocess[0].task"),
        (
            {"heads": {"probability": "nuc", "energy": "energy", "type": "tp"}},
            "postprocess[0].heads.type",
        ),
    ],
)
def test_card_errors_name_the_field(entry, field):
    with pytest.raises(ModelError, match=re.escape(f"model card 'synthetic-watershed': {field}:")):
        tasks_from_card(card_with(**entry), CHANNELS, 0.5)


def test_card_params_become_model_pixels():
    card = card_with(params={"min_area_um2": 10.0, "min_distance_um": 3.0, "smooth_um": 0.5})
    (task,) = tasks_from_card(card, CHANNELS, 0.25)
    assert task.px["min_area"] == pytest.approx(160.0)  # 10 µm² at 0.25 µm/px
    assert task.px["min_distance"] == 12 and task.px["smooth_sigma"] == 2.0
    assert task.halo == 12 + 8 + 1  # marker window + 4 sigma of smoothing + 1


def test_hv_head_needs_two_channels():
    card = sm.card("hovernet", {"nuc": "probability", "energy": "hv"})
    with pytest.raises(ModelError, match=r"heads\.hv: head 'energy' must have 2 channels"):
        tasks_from_card(card, CHANNELS, 0.5)


def two_touching(gap: float = 0.0):
    objs = sm.make_objects([(30, 30, 9, 9), (30 + 18 + gap, 30, 9, 9)])
    return sm.render(objs, (0, 60, 0, 80))


def test_watershed_separates_touching_nuclei():
    (task,) = tasks_from_card(sm.card("watershed", HEADS), CHANNELS, 0.5)
    m = two_touching()
    labels = postprocess.watershed_labels(m["probability"], m["energy"], task)
    assert labels.max() == 2
    # each object is one disk: same pixels as the ground truth, up to the rim
    for k in (1, 2):
        agree = ((labels == k) == (m["labels"] == k)).mean()
        assert agree > 0.99


def test_foreground_without_a_marker_is_still_an_object():
    (task,) = tasks_from_card(
        sm.card("watershed", HEADS, params={"marker_threshold": 2.0}), CHANNELS, 0.5
    )
    m = two_touching(gap=6.0)
    labels = postprocess.watershed_labels(m["probability"], m["energy"], task)
    assert labels.max() == 2  # no energy reaches 2: each blob becomes one object


def test_small_holes_filled_but_not_pockets_open_at_the_border():
    mask = np.ones((20, 20), bool)
    mask[5:7, 5:7] = False  # a 4 px hole
    mask[0:3, 10:12] = False  # a pocket open to the border
    filled = postprocess.fill_small_holes(mask, max_area=10)
    assert filled[5:7, 5:7].all() and not filled[0:3, 10:12].any()


def test_class_vote_ignores_background_unless_alone():
    (task,) = tasks_from_card(
        sm.card(
            "hovernet_fixed", {"np": "probability", "hv": "hv", "tp": "type"}, ("Bg", "A", "B")
        ),
        {"np": 1, "hv": 2, "tp": 3},
        0.5,
    )
    labels = np.array([[1, 1, 1, 2, 2]])
    types = np.zeros((1, 5, 3), np.float32)
    types[0, :, 0] = [0.7, 0.7, 0.1, 0.9, 0.9]  # object 1: mostly background votes
    types[0, :, 2] = [0.3, 0.3, 0.9, 0.1, 0.1]
    cls, prob = postprocess.classify(labels, 2, task, np.ones((1, 5, 1)), types)
    assert cls.tolist() == [2, 0]
    assert prob[0] == pytest.approx((0.3 + 0.3 + 0.9) / 3)


def test_class_map_marks_uncovered_pixels():
    probs = np.zeros((2, 2, 3), np.float32)
    probs[..., 2] = 1
    cmap = postprocess.class_map(probs, np.array([[1, 0], [2, 1]], np.uint16))
    assert cmap.tolist() == [[2, 255], [2, 2]]


def test_tile_grid_partitions_the_slide():
    tiles = tiling.tile_grid((300, 500), (128, 192), 20)
    cover = np.zeros((300, 500), int)
    for t in tiles:
        y0, y1, x0, x1 = t.core
        cover[y0:y1, x0:x1] += 1
        assert t.window[0] == max(y0 - 20, 0) and t.window[3] == min(x1 + 20, 500)
    assert (cover == 1).all() and len(tiles) == 3 * 3
    assert tiling.round_tile_shape((2000, 100), (256, 256)) == (2048, 256)


def test_centroid_on_a_seam_belongs_to_the_later_tile():
    tiles = tiling.tile_grid((64, 128), (64, 64), 16)
    labels = np.zeros((64, 128), np.int32)
    labels[30:34, 62:66] = 1  # centroid x = 63.5 + 0.5 ... pixel centres 62..65 -> 63.5
    labels[10:14, 63:65] = 2  # centroid x = 63.5 as well, but 2 wide
    labels[40:44, 64:68] = 3  # centroid 65.5
    owners = []
    for t in tiles:
        y0, y1, x0, x1 = t.window
        win = labels[y0:y1, x0:x1]
        keep, _ = tiling.ownership(t, (64, 128), label_stats(win, 3), halo=2)
        owners.append(keep.tolist())
    # mean pixel index 63.5 < 64: left tile; 65.5: right tile; each object exactly once
    assert owners == [[True, True, False], [False, False, True]]


def test_outline_is_in_level0_pixel_edges():
    labels = np.zeros((10, 10), np.int32)
    labels[2:5, 3:7] = 1  # 3 rows x 4 columns
    stats = label_stats(labels, 1)
    (poly,) = object_polygons(labels, np.array([1]), stats.bbox, (100, 200), scale=2.0)
    x0, y0, x1, y1 = poly.bounds
    assert (x0, y0, x1, y1) == (2 * 203, 2 * 102, 2 * 207, 2 * 105)
    assert poly.area == pytest.approx((12 - 0.5) * 4)  # corners cut by marching squares


def test_ids_number_objects_sharing_a_corner():
    corners = np.array([[5, 7], [5, 7], [5, 8], [5, 7]])
    assert object_ids("nuclei", corners[[0, 1, 3, 2]]) == [
        "nuclei-5-7",
        "nuclei-5-7-1",
        "nuclei-5-7-2",
        "nuclei-5-8",
    ]


def test_densest_window_finds_the_cluster():
    rng = np.random.default_rng(0)
    cx = np.concatenate([rng.uniform(0, 4000, 200), rng.uniform(3000, 3300, 300)])
    cy = np.concatenate([rng.uniform(0, 3000, 200), rng.uniform(500, 800, 300)])
    x0, y0, w, h = overlay.densest_window(cx, cy, (3000, 4000), 512)
    assert (w, h) == (512, 512)
    assert x0 <= 3000 and x0 + w >= 3300 and y0 <= 500 and y0 + h >= 800
    assert overlay.densest_window(cx[:0], cy[:0], (100, 200), 512) == (0, 0, 200, 100)


def test_margin_smaller_than_the_post_processing_reach_is_refused(tmp_path):
    card = sm.card("watershed", HEADS, params={"min_distance_um": 5.0})
    path = sm.write_maps(tmp_path / "m.zarr", sm.make_objects([]), (200, 200), card, HEADS)
    with pytest.raises(ConfigError, match=r"'instances\.margin': 8 px is too small.*at least 12"):
        extract(path, opts(tile_shape=(64, 64), margin=8))


def test_margin_not_smaller_than_the_tile_is_refused(tmp_path):
    path = sm.write_maps(
        tmp_path / "m.zarr", sm.make_objects([]), (300, 300), sm.card("watershed", HEADS), HEADS
    )
    with pytest.raises(
        ConfigError, match=r"'instances.margin': 64 px is not smaller than the tile"
    ):
        extract(path, opts(tile_shape=(64, 64), margin=64))


def test_failure_leaves_no_table(tmp_path):
    card = sm.card("watershed", HEADS, params={"no_such": 1})
    path = sm.write_maps(tmp_path / "m.zarr", sm.make_objects([]), (64, 64), card, HEADS)
    out = tmp_path / "out" / "instances.parquet"
    with pytest.raises(ModelError, match="params: unknown"):
        run(path, out, options=opts(tile_shape=(64, 64), margin=16))
    assert not out.exists() and list(out.parent.glob("*")) == []


def test_store_without_attributes_is_named(tmp_path):
    zarr.open_group(tmp_path / "bad.zarr", mode="w")
    with pytest.raises(HistoflowError, match=r"bad.zarr': attributes missing: shape"):
        extract(tmp_path / "bad.zarr")


def test_empty_slide_gives_an_empty_table(tmp_path):
    card = sm.card("watershed", HEADS)
    path = sm.write_maps(tmp_path / "m.zarr", sm.make_objects([]), (150, 150), card, HEADS)
    out = tmp_path / "instances.parquet"
    stats = run(path, out, options=opts(tile_shape=(64, 64), margin=16))
    import pyarrow.parquet as pq

    assert stats.objects == {"nuclei": 0} and pq.read_table(out).num_rows == 0


def test_rule_memory_follows_maps_zarr_and_refuses_a_corrupt_store(tmp_path):
    cfg = schema_defaults("instances")
    dry = estimate_mem_mb(tmp_path / "not-yet.zarr", cfg, 2)
    card = sm.card("watershed", HEADS)
    wide = sm.write_maps(tmp_path / "m.zarr", sm.make_objects([]), (64, 40000), card, HEADS)
    # A slide wider than the dry-run guess: a wider strip of windows in memory.
    assert estimate_mem_mb(wide, cfg, 2) > dry
    assert estimate_mem_mb(wide, cfg, 3) > estimate_mem_mb(wide, cfg, 2)
    corrupt = tmp_path / "corrupt.zarr"
    corrupt.mkdir()
    (corrupt / "zarr.json").write_text("{not json")
    with pytest.raises(HistoflowError, match=r"corrupt\.zarr"):
        estimate_mem_mb(corrupt, cfg, 2)
