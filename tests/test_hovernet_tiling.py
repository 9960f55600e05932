"""Method `hovernet` (the published post-processing) in the tiled instances engine.

Synthetic HoVer maps (histoflow.synthetic.maps: ellipses with exact hv maps, touching
pairs) at PanNuke's resolution, post-processed with the built-in card's tile shape and
margin: the tiles must give the whole-map result object for object, with the published
algorithm's window normalisation taken over the whole map. Also the difference from
`hovernet_fixed` on the same maps, and tile shape and margin read from the card.
"""

from __future__ import annotations

import numpy as np
import pytest
import shapely
import yaml
from histoflow.errors import ModelError
from histoflow.instances import InstancesOptions, evaluate, extract
from histoflow.instances.hovernet_published import HoverStats, hovernet_labels, minmax, sobel
from histoflow.instances.tasks import tasks_from_card
from histoflow.synthetic import maps as sm

CARDS = __import__("pathlib").Path(__file__).parents[1] / "workflow/histoflow/models/cards"
HEADS = {"np": "probability", "hv": "hv", "tp": "type"}
CLASSES = ("Background", "Tumour", "Lymphocyte")
SHAPE = (1400, 1400)  # 2 x 2 tiles of the PanNuke card (1024 -> 984 px, margin 128)
MPP = 0.25


def pannuke_tiling() -> tuple[list[int], int]:
    card = yaml.safe_load((CARDS / "hovernet_fast-pannuke.yaml").read_text())
    return card["tile_shape"], card["margin"]


def scene(seed: int = 0):
    """Nuclei 7-14 px in semi-axis (2-3.5 µm at 0.25 µm/px), 30 % in touching pairs."""
    return sm.random_nuclei(SHAPE, spacing=40, radius=(7, 14), classes=(1, 2), seed=seed)


def write(tmp_path, objs, method, params=None, name="m"):
    card = sm.card(method, HEADS, CLASSES, params, mpp=MPP, patch_output=(164, 164))
    return sm.write_maps(tmp_path / f"{name}.zarr", objs, SHAPE, card, HEADS, band_rows=350)


def opts(tile_shape, margin=64):
    return InstancesOptions.from_config({"tile_shape": tile_shape, "margin": margin, "workers": 1})


def geoms(objs):
    return shapely.from_wkb(objs.contour)


def truth_of(objs):
    return sm.render(objs, (0, SHAPE[0], 0, SHAPE[1]), n_classes=len(CLASSES))["labels"]


@pytest.mark.parametrize("seed", [2, 3])
def test_tiled_equals_whole_map_at_the_card_margin(tmp_path, seed):
    # Seeds where each tile normalising by its own extremes changes a few objects.
    objs = scene(seed)
    path = write(tmp_path, objs, "hovernet")
    tile, margin = pannuke_tiling()
    (t, meta, stats), (w, _, _) = extract(path, opts(tile, margin)), extract(path, opts(None))
    assert stats.tiles == 4 and meta["margin"] == margin
    tiled, whole = geoms(t[0][2]), geoms(w[0][2])
    m = evaluate.match(tiled, whole)
    assert m.f1 == 1.0 and m.mean_iou > 0.99999, m
    assert evaluate.duplicates(tiled) == 0
    assert stats.truncated["nuclei"] == 0 and stats.conflicts["nuclei"] == 0
    truth = truth_of(objs)
    assert evaluate.match(whole, evaluate.label_polygons(truth)).f1 >= 0.99
    # types: the class of the true object under the centroid; probability = vote share
    found = t[0][2]
    cx, cy = found.centroid.T.astype(int)
    expected = np.concatenate([[0], objs["cls"]])[truth[cy, cx]]
    assert np.mean(found.class_id == expected) > 0.99
    assert np.all((found.probability > 0.5) & (found.probability <= 1.0))


def test_own_window_extremes_as_stats_change_nothing():
    objs = scene(1)
    maps = sm.render(objs, (0, 300, 0, 300), n_classes=1)
    prob, hv = maps["probability"][..., 0], maps["hv"]
    ext = [(float(hv[..., c].min()), float(hv[..., c].max())) for c in (0, 1)]
    dh = sobel(minmax(hv[..., 0]), axis=1, ksize=21)
    dv = sobel(minmax(hv[..., 1]), axis=0, ksize=21)
    stats = HoverStats(ext[0], ext[1], (dh.min(), dh.max()), (dv.min(), dv.max()))
    own = hovernet_labels(prob, hv)
    assert own.max() > 20
    assert np.array_equal(hovernet_labels(prob, hv, stats=stats), own)
    wider = HoverStats(ext[0], ext[1], (2 * dh.min(), dh.max()), (dv.min(), dv.max()))
    assert not np.array_equal(hovernet_labels(prob, hv, stats=wider), own)


def test_published_and_fixed_differ_as_the_readme_says(tmp_path):
    objs = scene(0)
    truth = evaluate.label_polygons(truth_of(objs))
    found = {}
    for method, params in [
        ("hovernet", None),
        ("hovernet_fixed", None),  # default min_area 10 µm² = 160 px at 0.25 µm/px
        ("hovernet_fixed", {"min_area_um2": 10 * MPP * MPP}),  # 10 px, as published
    ]:
        path = write(tmp_path, objs, method, params, name=f"{method}{len(found)}")
        (res, _, _) = extract(path, opts(*pannuke_tiling()))
        found[len(found)] = geoms(res[0][2])
    published, fixed, fixed10 = (evaluate.match(found[k], truth) for k in range(3))
    assert published.f1 >= 0.99 and fixed10.f1 >= 0.99
    assert fixed.f1 < 0.95 and fixed.fn > 20 * fixed10.fn  # small nuclei under 160 px lost
    agree = evaluate.match(found[2], found[0])
    assert agree.f1 > 0.99 and 0.99 < agree.mean_iou < 0.9999  # same objects, other outlines


def test_tile_shape_and_margin_come_from_the_card_unless_configured(tmp_path):
    objs = scene(0)[:50]
    card = sm.card("hovernet", HEADS, CLASSES, mpp=MPP, patch_output=(164, 164))
    card.update(tile_shape=[328, 328], margin=40)
    path = sm.write_maps(tmp_path / "c.zarr", objs, SHAPE, card, HEADS, band_rows=350)
    _, meta, _ = extract(path, InstancesOptions.from_config({"workers": 1}))
    assert meta["tile_shape"] == [328, 328] and meta["margin"] == 40
    _, meta, _ = extract(path, opts([492, 492], margin="card"))
    assert meta["tile_shape"] == [492, 492] and meta["margin"] == 40
    plain = write(tmp_path, objs, "hovernet", name="plain")  # a card without them
    _, meta, _ = extract(plain, InstancesOptions.from_config({"workers": 1}))
    assert meta["tile_shape"] == [1968, 1968] and meta["margin"] == 64  # schema defaults, rounded


def test_scale_factor_sets_the_published_sizes():
    channels = {"np": 1, "hv": 2, "tp": 3}
    card = sm.card("hovernet", HEADS, CLASSES, {"scale_factor": 0.5})
    (task,) = tasks_from_card(card, channels, 0.5)
    assert task.hover_params().ksize == 11 and task.hover_params().min_marker_size == 3
    assert task.halo == 5 + 4 + 2
    with pytest.raises(ModelError, match=r"params\.scale_factor: 0\.35 gives a Sobel kernel"):
        tasks_from_card(sm.card("hovernet", HEADS, CLASSES, {"scale_factor": 0.35}), channels, 0.5)
    with pytest.raises(ModelError, match=r"params: unknown \['min_area_um2'\] for hovernet"):
        tasks_from_card(sm.card("hovernet", HEADS, CLASSES, {"min_area_um2": 1}), channels, 0.5)


def test_glass_tiles_are_skipped_and_change_nothing(tmp_path, monkeypatch):
    # 3 x 3 tiles; the bottom-right tile's whole window lies where no patch landed
    # (coverage 0): it is neither read nor post-processed, in the statistics pass or the
    # tile pass, and the objects equal a whole-map pass (which sees the zeros there).
    from histoflow.instances import normalise, schedule

    shape = (2100, 2100)
    objs = sm.random_nuclei(shape, spacing=40, radius=(7, 14), classes=(1, 2), seed=4)
    card = sm.card("hovernet", HEADS, CLASSES, None, mpp=MPP, patch_output=(164, 164))
    path = sm.write_maps(
        tmp_path / "m.zarr",
        objs,
        shape,
        card,
        HEADS,
        band_rows=350,
        blank=[(1700, 2100, 1700, 2100)],
    )
    calls = {"tiles": 0, "stats": 0}

    def counted(fn, key):
        def run(*args):
            calls[key] += 1
            return fn(*args)

        return run

    monkeypatch.setattr(schedule, "process_tile", counted(schedule.process_tile, "tiles"))
    monkeypatch.setattr(
        normalise, "core_gradient_extremes", counted(normalise.core_gradient_extremes, "stats")
    )
    tile, margin = pannuke_tiling()
    (t, _, stats) = extract(path, opts(tile, margin))
    assert stats.tiles == 9 and calls == {"tiles": 8, "stats": 8}
    (w, _, _) = extract(path, opts(None))
    tiled, whole = geoms(t[0][2]), geoms(w[0][2])
    assert len(whole) > 1000
    m = evaluate.match(tiled, whole)
    assert m.f1 == 1.0 and m.mean_iou > 0.99999, m
    assert np.array_equal(np.bincount(t[0][2].class_id), np.bincount(w[0][2].class_id))
