"""Instance exports: QuPath GeoJSON, SQLite annotation store with R-tree, per-object TSV."""

from __future__ import annotations

import json
import sqlite3
import uuid

import export_fixtures as fx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import shapely
from histoflow.export.geojson import export_geojson
from histoflow.export.instances import object_uuid
from histoflow.export.sqlite_store import export_sqlite, query_rect
from histoflow.export.tables import export_objects_tsv
from histoflow.io.instance_table import (
    InstanceTableError,
    instance_classes,
    open_instance_table,
    read_instance_table,
    write_instance_table,
)
from shapely.geometry import shape

N_ELLIPSES = 60


@pytest.fixture(scope="module")
def instances(tmp_path_factory):
    return fx.make_instances(tmp_path_factory.mktemp("inst") / "instances.parquet", N_ELLIPSES)


@pytest.fixture(scope="module")
def table(instances):
    return pq.read_table(instances).to_pandas().set_index("id", drop=False)


@pytest.fixture(scope="module")
def geojson(instances, tmp_path_factory):
    out = tmp_path_factory.mktemp("gj") / "S1.geojson"
    export_geojson(instances, out, fx.SAMPLE)
    return out


@pytest.fixture(scope="module")
def store(instances, tmp_path_factory):
    out = tmp_path_factory.mktemp("db") / "S1.sqlite"
    export_sqlite(instances, out, fx.SAMPLE)
    return out


def test_geojson_features_are_valid_qupath_detections(geojson, table):
    doc = json.loads(geojson.read_text(encoding="utf-8"))
    assert doc["type"] == "FeatureCollection"
    feats = doc["features"]
    # every object but the one without area (collinear points)
    assert len(feats) == len(table) - 1
    colors = {
        c["name"]: list(int(c["color"][i : i + 2], 16) for i in (1, 3, 5)) for c in fx.CLASSES
    }
    by_uuid = {object_uuid(fx.SAMPLE, i): i for i in table.index}
    for f in feats:
        assert f["type"] == "Feature"
        assert uuid.UUID(f["id"]).version == 5
        row = table.loc[by_uuid[f["id"]]]
        geom = shape(f["geometry"])
        assert geom.is_valid and not geom.is_empty
        assert f["geometry"]["type"] in ("Polygon", "MultiPolygon")
        props = f["properties"]
        assert props["objectType"] == "detection"
        cls = props["classification"]
        assert cls["name"] == row["class_name"]
        assert cls["color"] == colors[row["class_name"]]
        assert all(isinstance(v, int) for v in cls["color"])
        m = props["measurements"]
        assert m["Area µm^2"] == pytest.approx(row["area_px"] * fx.SLIDE_MPP**2, abs=1e-3)
        assert m["Probability"] == pytest.approx(row["probability"], abs=1e-4)
        assert props["metadata"]["histoflow_id"] == row["id"]
        # level-0 placement: the feature sits where the instance table says
        assert geom.bounds == pytest.approx(
            (row["bbox_x0"], row["bbox_y0"], row["bbox_x1"], row["bbox_y1"]), abs=0.01
        )
        if geom.geom_type == "Polygon" and not list(geom.interiors):
            c = geom.centroid
            assert (c.x, c.y) == pytest.approx((row["centroid_x"], row["centroid_y"]), abs=0.01)


def test_geojson_repairs_invalid_and_keeps_holes(geojson, table):
    feats = json.loads(geojson.read_text(encoding="utf-8"))["features"]
    by_id = {f["properties"]["metadata"]["histoflow_id"]: f for f in feats}
    ids = list(table.index)
    bowtie, holed, flat = ids[N_ELLIPSES], ids[N_ELLIPSES + 1], ids[N_ELLIPSES + 2]
    fixed = shape(by_id[bowtie]["geometry"])
    assert fixed.geom_type == "MultiPolygon" and len(fixed.geoms) == 2
    assert fixed.area == pytest.approx(800.0)
    ring = shape(by_id[holed]["geometry"])
    assert len(ring.interiors) == 1 and ring.area == pytest.approx(60 * 60 - 20 * 20)
    assert flat not in by_id


def test_geojson_rerun_gives_identical_bytes(instances, geojson, tmp_path):
    again = tmp_path / "again.geojson"
    export_geojson(instances, again, fx.SAMPLE)
    assert again.read_bytes() == geojson.read_bytes()


def _brute_force(table, rect):
    hits = set()
    for iid, wkb in zip(table["id"], table["contour"], strict=True):
        geom = shapely.make_valid(shapely.from_wkb(wkb))
        if geom.area > 0 and geom.intersects(rect):
            hits.add(object_uuid(fx.SAMPLE, iid))
    return hits


def test_sqlite_rtree_query_matches_brute_force(store, table):
    con = sqlite3.connect(store)
    (sql,) = con.execute("SELECT sql FROM sqlite_master WHERE name='objects_rtree'").fetchone()
    assert "rtree" in sql.lower()
    assert con.execute("SELECT COUNT(*) FROM objects_rtree").fetchone()[0] == len(table) - 1
    con.close()
    rng = np.random.default_rng(3)
    rects = [(0, 0, 2000, 1500), (95, 95, 105, 105), (515, 515, 545, 545), (1, 1, 2, 2)]
    for _ in range(40):
        x0, y0 = rng.uniform(0, 1900), rng.uniform(0, 1400)
        rects.append((x0, y0, x0 + rng.uniform(1, 400), y0 + rng.uniform(1, 300)))
    nonempty = 0
    for r in rects:
        got = query_rect(store, *r)
        want = _brute_force(table, shapely.box(*r))
        assert {o["id"] for o in got} == want, r
        nonempty += bool(want)
    assert nonempty > 10
    # the hole of the square is inside its box but not its geometry: the exact test drops it
    assert query_rect(store, 525, 525, 535, 535) == []
    assert len(query_rect(store, 525, 525, 535, 535, exact=False)) == 1


def test_sqlite_rows_carry_class_probability_and_properties(store, table):
    con = sqlite3.connect(store)
    rows = con.execute(
        "SELECT id, class, probability, geometry, properties FROM objects"
    ).fetchall()
    meta = dict(con.execute("SELECT key, value FROM metadata").fetchall())
    con.close()
    assert json.loads(meta["slide_mpp"]) == fx.SLIDE_MPP
    for uid, cls, prob, wkb, props in rows:
        props = json.loads(props)
        row = table.loc[props["instance_id"]]
        assert uid == object_uuid(fx.SAMPLE, row["id"]) and cls == row["class_name"]
        assert prob == pytest.approx(row["probability"])
        assert shapely.from_wkb(wkb).is_valid


def test_sqlite_rerun_gives_identical_bytes(instances, store, tmp_path):
    again = tmp_path / "again.sqlite"
    export_sqlite(instances, again, fx.SAMPLE)
    assert again.read_bytes() == store.read_bytes()


def test_objects_tsv(instances, table, geojson, tmp_path):
    out = tmp_path / "S1.objects.tsv"
    assert export_objects_tsv(instances, out, fx.SAMPLE) == len(table)
    got = pd.read_csv(out, sep="\t")
    assert list(got["instance_id"]) == list(table["id"])
    assert list(got["class_name"]) == list(table["class_name"])
    np.testing.assert_allclose(got["centroid_x"], table["centroid_x"], atol=0.005)
    np.testing.assert_allclose(got["area_um2"], table["area_px"] * fx.SLIDE_MPP**2, atol=5e-4)
    feats = json.loads(geojson.read_text(encoding="utf-8"))["features"]
    assert {f["id"] for f in feats} <= set(got["id"])  # the same UUIDs as the GeoJSON
    again = tmp_path / "again.tsv"
    export_objects_tsv(instances, again, fx.SAMPLE)
    assert again.read_bytes() == out.read_bytes()


def test_unreadable_instance_table_names_the_file(tmp_path):
    bad = tmp_path / "instances.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(InstanceTableError, match=r"instances\.parquet"):
        open_instance_table(bad)
    with pytest.raises(InstanceTableError, match=r"instances\.parquet"):
        export_geojson(bad, tmp_path / "x.geojson", "S1")
    assert not (tmp_path / "x.geojson").exists()


def test_class_list_is_read_from_the_tasks_extract_instances_writes(instances):
    table, meta = read_instance_table(instances)
    assert meta["tasks"] == {"nuclei": fx.CLASSES}
    assert instance_classes(meta) == [("nuclei", c["name"]) for c in fx.CLASSES]
    assert open_instance_table(instances).classes() == instance_classes(meta)
    assert table.num_rows == N_ELLIPSES + 3


def test_a_class_list_shape_nothing_writes_is_refused(tmp_path):
    table, meta = read_instance_table(fx.make_instances(tmp_path / "instances.parquet", 3))
    meta["tasks"] = {"nuclei": {"classes": fx.CLASSES}}
    odd = tmp_path / "odd.parquet"
    write_instance_table(table, odd, meta)
    with pytest.raises(InstanceTableError, match=r"odd\.parquet.*'tasks'"):
        open_instance_table(odd)
    with pytest.raises(InstanceTableError, match=r"odd\.parquet"):
        export_objects_tsv(odd, tmp_path / "odd.tsv", fx.SAMPLE)
    assert not (tmp_path / "odd.tsv").exists()
