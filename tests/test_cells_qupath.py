"""QuPath cell objects (histoflow.cells.qupath): valid per QuPath's GeoJSON rules, cells
grown within their neighbours, measurements named apart from QuPath's computed ones,
"NaN" for non-finite values, and the gzip file readable and reproducible."""

from __future__ import annotations

import gzip
import json
import uuid

import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely
from histoflow.cells import qupath
from histoflow.cells.stage import CellsOptions, run
from histoflow.export.geojson import export_geojson
from histoflow.synthetic.cells import ellipse_labels, write_label_table
from histoflow.synthetic.writers import write_slide
from shapely.geometry import shape
from test_cells_stage import synthetic_case


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qp")
    slide, table, *_ = synthetic_case(folder, slide_mpp=0.25, seed=3, size=240)
    cells, graph = folder / "cells.parquet", folder / "graph.parquet"
    run(table, slide, cells, graph, CellsOptions.from_config({"workers": 1}), sample="S1")
    return folder, cells, table


def read(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return json.load(fh)


def test_cells_follow_qupaths_geojson_rules(measured):
    folder, cells, table = measured
    out = folder / "S1.cells.geojson"
    n = qupath.export_cells(cells, table, out, "S1", expansion_um=3.0)
    doc = read(out)
    frame = pq.read_table(cells).to_pandas()
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == n == len(frame)
    for feature, (_, row) in zip(doc["features"], frame.iterrows()):
        assert uuid.UUID(feature["id"]).version == 5
        assert "nucleusGeometry" in feature and "nucleusGeometry" not in feature["properties"]
        props = feature["properties"]
        assert props["objectType"] == "cell"
        color = props["classification"]["color"]
        assert len(color) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in color)
        assert props["classification"]["name"] == row["class_name"]
        m = props["measurements"]
        assert not set(m) & set(qupath.QUPATH_COMPUTED)
        assert m["Nucleus: Area µm^2"] == pytest.approx(row["area_um2"], rel=1e-4)
        assert m["Nucleus: Hematoxylin OD mean"] == pytest.approx(
            row["hematoxylin_od_mean"], abs=1e-4
        )
        assert m["Neighbours within 50 µm: Tumour"] == row["neighbours_Tumour"]
        assert m["Delaunay degree"] == row["delaunay_degree"]
        assert all(isinstance(v, int | float) or v == "NaN" for v in m.values())
        assert props["metadata"]["histoflow_id"] == row["id"]
        nucleus, cell = shape(feature["nucleusGeometry"]), shape(feature["geometry"])
        assert nucleus.is_valid and cell.is_valid
        assert cell.buffer(0.02).covers(nucleus)
        assert cell.area > nucleus.area
        # grown by at most 3 µm (12 level-0 px at 0.25 µm/px) plus the 1 px simplification
        assert nucleus.buffer(13.05).covers(cell)
        assert m["Cell: Area µm^2"] == pytest.approx(cell.area * 0.25**2, rel=1e-3)


def test_cells_are_limited_by_their_neighbours(measured):
    folder, cells, table = measured
    out = folder / "big.cells.geojson"
    qupath.export_cells(cells, table, out, "S1", expansion_um=20.0)
    geoms = [shape(f["geometry"]) for f in read(out)["features"]]
    tree = shapely.STRtree(geoms)
    pairs = tree.query(geoms, predicate="intersects")
    overlap = sum(geoms[i].intersection(geoms[j]).area for i, j in pairs.T if i < j)
    assert overlap < 1e-3 * sum(g.area for g in geoms)
    # nuclei sit on a 48 level-0 px grid: inside the slide a cell is about one grid
    # square, whereas a free 20 µm (80 px) expansion would be over 20000 px²
    assert np.median([g.area for g in geoms]) < 1.2 * 48**2


def test_zero_expansion_gives_the_nucleus(measured):
    folder, cells, table = measured
    out = folder / "zero.cells.geojson"
    qupath.export_cells(cells, table, out, "S1", expansion_um=0.0)
    for f in read(out)["features"]:
        assert f["geometry"] == f["nucleusGeometry"]


def test_chunks_do_not_change_the_cells(measured, monkeypatch):
    folder, cells, table = measured
    whole, parts = folder / "whole.geojson", folder / "parts.geojson"
    qupath.export_cells(cells, table, whole, "S1", expansion_um=4.0)
    monkeypatch.setattr(qupath, "CHUNK_ROWS", 7)
    qupath.export_cells(cells, table, parts, "S1", expansion_um=4.0)
    assert whole.read_bytes() == parts.read_bytes()


def test_gzip_is_readable_and_reproducible(measured):
    folder, cells, table = measured
    plain, packed = folder / "p.cells.geojson", folder / "p.cells.geojson.gz"
    qupath.export_cells(cells, table, plain, "S1")
    qupath.export_cells(cells, table, packed, "S1", compress=True)
    assert packed.read_bytes()[:2] == b"\x1f\x8b"
    assert gzip.decompress(packed.read_bytes()) == plain.read_bytes()
    again = folder / "again.cells.geojson.gz"
    qupath.export_cells(cells, table, again, "S1", compress=True)
    assert again.read_bytes() == packed.read_bytes()
    assert packed.stat().st_size < plain.stat().st_size / 3


def test_non_finite_measurements_are_nan_strings(tmp_path):
    # a one-pixel nucleus has no perimeter, so no circularity
    labels = ellipse_labels((40, 40), [(20, 20, 6, 4, 0.3)])
    labels[5, 5] = 2
    write_slide(tmp_path / "s.tif", np.full((40, 40, 3), 200, np.uint8), 0.5, compression="zlib")
    write_label_table(tmp_path / "i.parquet", labels, 0.5, 0.5)
    run(tmp_path / "i.parquet", tmp_path / "s.tif", tmp_path / "c.parquet", tmp_path / "g.parquet")
    out = tmp_path / "c.geojson"
    qupath.export_cells(tmp_path / "c.parquet", tmp_path / "i.parquet", out, "S")
    text = out.read_text(encoding="utf-8")
    assert '"Nucleus: Circularity":"NaN"' in text and "null" not in text
    detections = tmp_path / "d.geojson.gz"
    export_geojson(tmp_path / "i.parquet", detections, "S", compress=True)
    for f in read(detections)["features"]:
        assert not set(f["properties"]["measurements"]) & set(qupath.QUPATH_COMPUTED)
