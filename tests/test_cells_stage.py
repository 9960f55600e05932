"""measure_cells (histoflow.cells.stage): a synthetic slide whose stain densities are
known, read through the slide reader at the model's resolution; batched, blocked and
parallel runs equal one whole pass; neighbour counts and degrees agree with the
centroids and the graph; tables without nuclei."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from histoflow.cells.measure import MEASUREMENT_COLUMNS
from histoflow.cells.stage import CellsOptions, instance_tasks, run
from histoflow.io.cell_table import (
    NEIGHBOURS_TOTAL,
    open_cell_table,
    read_graph,
)
from histoflow.synthetic.cells import (
    ellipse_labels,
    stain_image,
    table_meta,
    write_label_table,
)
from histoflow.synthetic.writers import write_slide
from PIL import Image

MPP = 0.5


def synthetic_case(tmp_path, slide_mpp: float, seed: int = 0, size: int = 600):
    """Slide (level 0 at `slide_mpp`) and instance table of ellipse nuclei whose H and E
    densities are known; returns paths, densities and the label image (model px)."""
    rng = np.random.default_rng(seed)
    ellipses = []
    for cy in np.arange(14, size - 14, 24.0):
        for cx in np.arange(14, size - 14, 24.0):
            ry = rng.uniform(4, 9)
            ellipses.append((cy, cx, ry, ry * rng.uniform(0.5, 1), rng.uniform(0, math.pi)))
    labels = ellipse_labels((size, size), ellipses)
    n = int(labels.max())
    h, e = rng.uniform(0.3, 0.9, n), rng.uniform(0.05, 0.35, n)
    image = stain_image(labels, h, e)
    scale = MPP / slide_mpp
    level0 = image
    if scale != 1:
        w0, h0 = round(size * scale), round(size * scale)
        level0 = np.asarray(Image.fromarray(image).resize((w0, h0), Image.Resampling.NEAREST))
    slide = write_slide(tmp_path / "slide.tif", level0, slide_mpp, compression="zlib")
    class_id = (np.arange(n) % 3 == 0).astype(np.int32)
    table = write_label_table(tmp_path / "instances.parquet", labels, MPP, slide_mpp, class_id)
    return slide, table, h, e, labels


def run_stage(tmp_path, slide, table, name: str, **options):
    cells, graph = tmp_path / f"{name}.cells.parquet", tmp_path / f"{name}.graph.parquet"
    stats = run(table, slide, cells, graph, CellsOptions.from_config(options), sample="S")
    return cells, graph, stats


def test_known_stain_densities_through_the_slide_reader(tmp_path):
    slide, table, h, e, _ = synthetic_case(tmp_path, slide_mpp=0.25)
    cells, _, stats = run_stage(tmp_path, slide, table, "a", workers=1)
    frame = pq.read_table(cells).to_pandas()
    assert stats.cells == len(frame) == len(h)
    # rows in instance-table order; nuclei were drawn row-major, so are the ids
    order = np.argsort(frame["centroid_y"].to_numpy() * 1e6 + frame["centroid_x"].to_numpy())
    np.testing.assert_allclose(frame["hematoxylin_od_mean"].to_numpy()[order], h, atol=0.015)
    np.testing.assert_allclose(frame["eosin_od_mean"].to_numpy()[order], e, atol=0.015)
    assert (frame["hematoxylin_od_std"] < 0.01).all()
    # units: the table's areas (level-0 px at 0.25 µm) are the measured areas
    instances = pq.read_table(table).to_pandas()
    np.testing.assert_allclose(frame["area_um2"], instances["area_px"] * 0.25**2, rtol=1e-6)
    np.testing.assert_allclose(frame["centroid_x_um"], instances["centroid_x"] * 0.25)
    assert frame["id"].tolist() == instances["id"].tolist()


@pytest.mark.parametrize("slide_mpp", [0.5, 0.25, 0.3])
def test_batched_blocked_parallel_equals_whole(tmp_path, slide_mpp):
    slide, table, *_ = synthetic_case(tmp_path, slide_mpp, seed=1)
    whole, whole_graph, _ = run_stage(
        tmp_path, slide, table, "whole", workers=1, batch_rows=1_000_000, read_block=4096
    )
    tiled, tiled_graph, stats = run_stage(
        tmp_path, slide, table, "tiled", workers=2, batch_rows=64, read_block=64
    )
    assert stats.batches > 5 and stats.blocks > 50
    a, b = pq.read_table(whole).to_pandas(), pq.read_table(tiled).to_pandas()
    if slide_mpp in (0.5, 0.25):  # the model's pixels are a level's own: copied, exact
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    else:
        # Resampled: a block and the whole slide are interpolated at the same places,
        # but a pixel may round to the next grey level (tests/test_one_read.py), so the
        # stain columns agree to a few 1e-4 OD; shapes and ids come from the table alone.
        od = [c for c in a.columns if "_od_" in c]
        rgb = ["red_mean", "green_mean", "blue_mean"]
        pd.testing.assert_frame_equal(
            a.drop(columns=od + rgb), b.drop(columns=od + rgb), check_exact=True
        )
        assert len(od) == 8 and (a[od] - b[od]).abs().max().max() < 5e-3
        assert (a[rgb] - b[rgb]).abs().max().max() < 0.5  # grey levels
    assert read_graph(whole_graph)[0].equals(read_graph(tiled_graph)[0])


def test_neighbour_counts_and_degree_agree_with_centroids_and_graph(tmp_path):
    slide, table, *_ = synthetic_case(tmp_path, slide_mpp=0.5, seed=2, size=300)
    cells, graph, _ = run_stage(tmp_path, slide, table, "n", neighbour_radius_um=20.0)
    opened = open_cell_table(cells)
    frame = opened.read().to_pandas()
    xy = frame[["centroid_x_um", "centroid_y_um"]].to_numpy()
    dist = np.linalg.norm(xy[:, None] - xy[None], axis=2)
    near = (dist <= 20.0) & ~np.eye(len(xy), dtype=bool)
    np.testing.assert_array_equal(frame[NEIGHBOURS_TOTAL], near.sum(axis=1))
    for name in ("Tumour", "Lymphocyte"):
        of_class = (frame["class_name"] == name).to_numpy()
        np.testing.assert_array_equal(frame[f"neighbours_{name}"], near[:, of_class].sum(axis=1))
    edges, meta = read_graph(graph)
    s, t = edges["source"].to_numpy(), edges["target"].to_numpy()
    degree = np.bincount(s, minlength=len(frame)) + np.bincount(t, minlength=len(frame))
    np.testing.assert_array_equal(frame["delaunay_degree"], degree)
    np.testing.assert_allclose(edges["length_um"], dist[s, t], rtol=1e-6)
    assert meta["neighbour_radius_um"] == 20.0 == opened.meta["neighbour_radius_um"]
    assert opened.meta["units"]["area_um2"] == "µm²"


def test_no_nuclei_gives_empty_tables(tmp_path):
    slide, _, *_ = synthetic_case(tmp_path, slide_mpp=0.5, size=60)
    empty = write_label_table(tmp_path / "empty.parquet", np.zeros((60, 60), np.int32), MPP, MPP)
    cells, graph, stats = run_stage(tmp_path, slide, empty, "e")
    table = open_cell_table(cells)
    assert stats.cells == 0 and table.num_rows == 0
    assert set(MEASUREMENT_COLUMNS) <= set(table.columns)
    assert read_graph(graph)[0].num_rows == 0


def test_semantic_tasks_are_not_cells():
    meta = table_meta(MPP, MPP, (10, 10))
    meta["tasks"]["tissue"] = [{"name": "Tumour region"}]
    meta["methods"]["tissue"] = "semantic"
    assert instance_tasks(meta) == ["nuclei"]


def test_bad_stain_vectors_name_the_field():
    from histoflow.errors import ConfigError

    with pytest.raises(ConfigError, match=r"cells\.stain_vectors"):
        CellsOptions.from_config({"stain_vectors": [[1, 0, 0], [1, 0, 0]]})


def test_cohort_tables_have_per_class_cell_columns(tmp_path):
    from histoflow.cohort import write_summary
    from histoflow.paths import SamplePaths

    paths = SamplePaths("S1", str(tmp_path / "results"))
    slide, table, *_ = synthetic_case(tmp_path, slide_mpp=0.5, seed=4, size=200)
    run(table, slide, paths.cells_parquet, paths.cells_graph_parquet, sample="S1")
    paths.mask_json.parent.mkdir(parents=True)
    paths.mask_json.write_text('{"tissue_area_mm2": 0.01, "slide_dimensions": [200, 200]}')
    summary, cells_tsv = tmp_path / "summary.tsv", tmp_path / "cells.tsv"
    write_summary({"S1": {"path": str(slide)}}, summary, results_dir=tmp_path / "results",
                  cells_path=cells_tsv)  # fmt: skip
    head, row = (line.split("\t") for line in summary.read_text().splitlines())
    values = dict(zip(head, row))
    frame = pq.read_table(paths.cells_parquet).to_pandas()
    tumour = frame[frame["class_name"] == "Tumour"]
    column = "cells_nuclei_Tumour_median_area_um2"
    assert float(values[column]) == pytest.approx(tumour["area_um2"].median(), abs=0.01)
    assert "cells_nuclei_Lymphocyte_median_neighbours_total" in values
    lines = [line.split("\t") for line in cells_tsv.read_text().splitlines()]
    by_class = {line[2]: dict(zip(lines[0], line)) for line in lines[1:]}
    assert set(by_class) == {"Tumour", "Lymphocyte"}
    assert int(by_class["Tumour"]["cells"]) == len(tumour)
    assert float(by_class["Tumour"]["cells_per_mm2"]) == pytest.approx(len(tumour) / 0.01)
    assert "median_neighbours_Lymphocyte" in lines[0]
