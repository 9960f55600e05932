"""Compact maps.zarr (merge.encoding: compact): probability heads as uint8 with a
scale_factor (class softmaxes over 3+ classes with their argmax kept exact), other
heads float16, coverage uint8 where it fits. The stored types must not change what
the later stages find."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
import zarr
from histoflow import merge
from histoflow.instances import InstancesOptions, evaluate, extract
from histoflow.instances.hovernet_published import hovernet_instances
from histoflow.io.maps_zarr import (
    COVERAGE,
    decode,
    encode,
    head_encoding,
    open_maps,
    store_encodings,
)
from histoflow.merge import MergeOptions
from histoflow.synthetic import maps as sm
from histoflow.synthetic.raw import write_synthetic_raw

PROB = {"name": "p", "activation": "softmax"}
OTHER = {"name": "hv", "activation": "none"}
TYPES = {"name": "tp", "activation": "softmax", "channels": 6}


def near_uniform_softmax(rng, shape, spread):
    """Softmaxes over the last axis of logits within `spread` of each other."""
    logits = rng.uniform(0.0, spread, shape)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def adversarial_types(rng):
    """(N, 6) class probabilities where rounding to 1/255 steps makes ties."""
    near = near_uniform_softmax(rng, (40_000, 6), 0.02)
    # exact ties in float (argmax: the first of the tied classes)
    ties = near_uniform_softmax(rng, (5_000, 6), 0.02)
    ties[:, 3] = ties[:, 1] = ties.max(axis=1)
    # values on and beside the half-step boundaries: (k + 0.5) / 255 rounds to even
    k = rng.integers(0, 255, (20_000, 1))
    off = rng.choice([-1e-6, 0.0, 1e-6], (20_000, 6))
    half = np.clip((k + 0.5 + off * 255) / 255, 0, 1).astype(np.float32)
    # a winner at 255 (and a tied loser that must step down), and winners at 0
    top = np.array([[254.6, 254.9, 254.7, 0, 0, 0], [255, 254.8, 0, 0, 0, 0.5]]) / 255
    zero = np.array([[-0.1, -0.05, -0.2, -0.3, -0.4, -0.5], [0, 0, 0, 0, 1e-4, 0]])
    rows = [near, ties, half, top.astype(np.float32), zero.astype(np.float32)]
    return np.concatenate(rows)


def test_class_softmax_keeps_its_argmax_exact_within_one_and_a_half_steps():
    rng = np.random.default_rng(3)
    p = adversarial_types(rng)
    enc = head_encoding(TYPES, "compact")
    plain = np.rint(np.clip(p, 0, 1) * 255)
    assert (plain.argmax(axis=1) != p.argmax(axis=1)).sum() > 10_000  # rounding flips many
    stored = encode(p, enc, "tp")
    assert stored.dtype == np.uint8 and stored.shape == p.shape
    np.testing.assert_array_equal(stored.argmax(axis=1), p.argmax(axis=1))
    back = decode(stored, enc)
    err = np.abs(back - np.clip(p, 0, 1))
    assert err.max() <= 1.5 / 255 + 1e-7
    # only the tie-broken values move; all others are the nearest step
    changed = stored != plain
    assert np.all(changed.sum(axis=1) <= 5)
    assert err[~changed].max() <= 1 / 510 + 1e-7
    # a winner at 255 keeps it, the classes tied with it step down
    assert list(stored[-4, :3]) == [254, 255, 254]
    # all below 0: the winner (clipped like the others) is raised one step
    assert list(stored[-2]) == [0, 1, 0, 0, 0, 0]
    # (rows, W, C) chunks as the writer encodes them: the same per pixel
    chunk = p[:40_000].reshape(100, 400, 6)
    np.testing.assert_array_equal(encode(chunk, enc, "tp").reshape(-1, 6), stored[:40_000])


def window_maps(store, shape):
    """np, hv and tp of a whole synthetic maps.zarr, decoded."""
    return open_maps(store).read_rows(["np", "hv", "tp"], 0, shape[0])


def test_hovernet_published_types_from_compact_maps_are_the_float32_ones(tmp_path):
    # Near-uniform type probabilities inside the nuclei: 1/255 rounding alone would tie
    # classes and flip the votes of HoVer-Net's per-pixel argmax.
    shape = (300, 300)
    objs = sm.random_nuclei(shape, spacing=40, radius=(7, 14), classes=(1, 2), seed=5)
    heads = {"np": "probability", "hv": "hv", "tp": "type"}
    card = sm.card("hovernet", heads, ("Background", "Tumour", "Lymphocyte"), mpp=0.25)
    tp = near_uniform_softmax(np.random.default_rng(6), (*shape, 3), 0.01)
    found = {}
    for encoding in ("compact", "float32"):
        path = sm.write_maps(
            tmp_path / f"{encoding}.zarr", objs, shape, card, heads, encoding=encoding
        )
        enc = open_maps(path).encoding("tp")
        zarr.open_group(path, mode="r+")["tp"][:] = encode(tp, enc, "tp")
        found[encoding] = window_maps(path, shape)
    compact, full = found["compact"], found["float32"]
    assert open_maps(tmp_path / "compact.zarr").array("tp").dtype == np.uint8
    plain = np.rint(tp * 255)
    assert (plain.argmax(axis=-1) != tp.argmax(axis=-1)).mean() > 0.05
    np.testing.assert_array_equal(compact["tp"].argmax(axis=-1), full["tp"].argmax(axis=-1))
    a = hovernet_instances(compact["np"][..., 0], compact["hv"], compact["tp"])
    b = hovernet_instances(full["np"][..., 0], full["hv"], full["tp"])
    assert b.count > 20
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.types, b.types)
    np.testing.assert_array_equal(a.type_prob, b.type_prob)


def test_probability_heads_quantise_within_half_a_step_and_keep_the_half_threshold():
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.random(200_000), 0.5 + (np.arange(-2000, 2000) * 1e-6)])
    p = p.astype(np.float32)
    enc = head_encoding(PROB, "compact")
    stored = encode(p, enc, "p")
    assert stored.dtype == np.uint8
    back = decode(stored, enc)
    assert back.dtype == np.float32
    assert np.abs(back - p).max() <= 1 / 510 + 1e-7
    # 0.5 is a rounding boundary of the 1/255 steps: thresholds at 0.5 are exact.
    assert np.array_equal(back >= 0.5, p >= 0.5)


def test_other_heads_are_float16_and_coverage_narrows_when_it_fits():
    assert head_encoding(OTHER, "compact") == {"dtype": "float16"}
    # a class softmax over 3+ classes: uint8 whose argmax is kept exact
    types = {"name": "tp", "activation": "softmax", "channels": 6}
    assert head_encoding(types, "compact") == {
        "dtype": "uint8",
        "scale_factor": 1 / 255,
        "argmax": True,
    }
    assert head_encoding(types, "float32") == {"dtype": "float32"}
    two = {"name": "np", "activation": "softmax", "channels": 2}
    assert head_encoding(two, "compact")["dtype"] == "uint8"
    assert head_encoding(PROB, "float32") == {"dtype": "float32"}
    assert store_encodings([PROB], "compact", 255)[COVERAGE] == {"dtype": "uint8"}
    assert store_encodings([PROB], "compact", 256)[COVERAGE] == {"dtype": "uint16"}
    big = np.array([1e6], np.float32)
    with pytest.raises(Exception, match=r"merge\.encoding"):
        encode(big, {"dtype": "float16"}, "hv")


def test_merged_compact_maps_decode_to_the_float32_merge(tmp_path):
    # Overlapping patches (stride 8 of 16): averages, not just copies, get stored.
    write_synthetic_raw(tmp_path / "raw.zarr", (64, 80), (16, 16), (8, 8), {"p": 2}, seed=1)
    for encoding in ("compact", "float32"):
        merge.run(
            tmp_path / "raw.zarr",
            tmp_path / f"{encoding}.zarr",
            MergeOptions.from_config({"encoding": encoding}),
        )
    compact, full = open_maps(tmp_path / "compact.zarr"), open_maps(tmp_path / "float32.zarr")
    assert compact.array(COVERAGE).dtype == np.uint8 and full.array(COVERAGE).dtype == np.uint16
    assert compact.attrs["encodings"]["p"]["dtype"] == compact.array("p").dtype
    assert np.array_equal(compact.read_rows([COVERAGE], 0, 64)[COVERAGE], full.array(COVERAGE)[:])
    a, b = compact.read_rows(["p"], 0, 64)["p"], full.read_rows(["p"], 0, 64)["p"]
    # two-class softmax probabilities: uint8, half a step at most
    assert compact.array("p").dtype == np.uint8 and a.dtype == np.float32
    assert np.abs(a - b).max() <= 1 / 510 + 1e-7
    assert compact.nbytes < full.nbytes / 1.9


@pytest.mark.parametrize("method", ["hovernet", "hovernet_fixed"])
def test_hovernet_instances_from_compact_maps_match_float32(tmp_path, method):
    shape = (700, 700)
    objs = sm.random_nuclei(shape, spacing=40, radius=(7, 14), classes=(1, 2), seed=4)
    heads = {"np": "probability", "hv": "hv", "tp": "type"}
    card = sm.card(method, heads, ("Background", "Tumour", "Lymphocyte"), mpp=0.25)
    found = {}
    for encoding in ("compact", "float32"):
        path = sm.write_maps(
            tmp_path / f"{encoding}.zarr", objs, shape, card, heads, encoding=encoding
        )
        per_task, _, _ = extract(path, InstancesOptions.from_config({"workers": 1}))
        found[encoding] = per_task[0][2]
    compact, full = found["compact"], found["float32"]
    polys = shapely.from_wkb(full.contour)
    m = evaluate.match(shapely.from_wkb(compact.contour), polys)
    assert len(full.class_id) > 200
    assert m.f1 >= 0.999, m
    # types: the float32 object under each compact object's centroid has its class
    points = shapely.points(compact.centroid)
    hit, under = shapely.STRtree(polys).query(points, predicate="within")
    assert len(hit) >= 0.999 * len(points)
    assert np.mean(compact.class_id[hit] == full.class_id[under]) >= 0.999
