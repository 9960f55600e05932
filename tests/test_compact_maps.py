"""Compact maps.zarr (merge.encoding: compact): probability heads as uint8 with a
scale_factor, other heads float16, coverage uint8 where it fits. The stored types
must not change what the later stages find."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from histoflow import merge
from histoflow.instances import InstancesOptions, evaluate, extract
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
    # the argmax of 3+ classes could flip at 1/255 steps
    types = {"name": "tp", "activation": "softmax", "channels": 6}
    assert head_encoding(types, "compact") == {"dtype": "float16"}
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
