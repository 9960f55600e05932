"""AnnData of cells (histoflow.cells.anndata_io): written, read back with anndata, the
same numbers as cells.parquet; concatenation of slides and its command line."""

from __future__ import annotations

import json

import anndata
import numpy as np
import pyarrow.parquet as pq
import pytest
from histoflow.cells.__main__ import main as cells_main
from histoflow.cells.anndata_io import AnnDataError, concat, export_anndata
from histoflow.cells.measure import MEASUREMENT_COLUMNS
from histoflow.cells.stage import CellsOptions, run
from histoflow.io.cell_table import read_graph
from test_cells_stage import synthetic_case


@pytest.fixture(scope="module")
def two_slides(tmp_path_factory):
    """cells.parquet + graph.parquet + cells.h5ad of two small synthetic slides."""
    out = {}
    for seed, sample in enumerate(["S1", "S2"]):
        folder = tmp_path_factory.mktemp(sample) / sample
        folder.mkdir()
        slide, table, *_ = synthetic_case(folder, slide_mpp=0.25, seed=seed, size=200)
        cells, graph = folder / "cells" / "cells.parquet", folder / "cells" / "graph.parquet"
        run(table, slide, cells, graph, CellsOptions.from_config({"workers": 1}), sample=sample)
        mask = folder / "mask.json"
        mask.write_text(json.dumps({"tissue_area_mm2": 0.01 * (seed + 1)}))
        h5ad = export_anndata(cells, graph, folder / "cells" / "cells.h5ad", mask)
        out[sample] = (cells, graph, h5ad)
    return out


def test_round_trip(two_slides):
    cells, graph, h5ad = two_slides["S1"]
    adata = anndata.read_h5ad(h5ad)
    frame = pq.read_table(cells).to_pandas()
    assert adata.shape == (len(frame), len(MEASUREMENT_COLUMNS))
    assert list(adata.var_names) == list(MEASUREMENT_COLUMNS)
    assert adata.var.loc["area_um2", "unit"] == "µm²"
    assert adata.var.loc["hematoxylin_od_mean", "kind"] == "intensity"
    np.testing.assert_array_equal(adata.X, frame[list(MEASUREMENT_COLUMNS)].to_numpy(np.float32))
    assert list(adata.obs_names) == frame["id"].tolist()
    assert list(adata.obs["class_name"].cat.categories) == ["Tumour", "Lymphocyte"]
    assert adata.obs["class_name"].astype(str).tolist() == frame["class_name"].tolist()
    np.testing.assert_array_equal(adata.obs["neighbours_total"], frame["neighbours_total"])
    np.testing.assert_array_equal(
        adata.obsm["spatial"], frame[["centroid_x_um", "centroid_y_um"]].to_numpy()
    )
    np.testing.assert_array_equal(
        adata.obsm["spatial_px"], frame[["centroid_x", "centroid_y"]].to_numpy()
    )
    edges, _ = read_graph(graph)
    conn = adata.obsp["spatial_connectivities"]
    dist = adata.obsp["spatial_distances"]
    assert conn.nnz == 2 * edges.num_rows and (conn != conn.T).nnz == 0
    s, t = edges["source"].to_numpy(), edges["target"].to_numpy()
    np.testing.assert_allclose(np.asarray(dist[s, t]).ravel(), edges["length_um"], rtol=1e-6)
    assert adata.uns["spatial_neighbors"]["connectivities_key"] == "spatial_connectivities"
    assert list(adata.uns["class_name_colors"]) == ["#d62728", "#2ca02c"]
    uns = adata.uns["histoflow"]
    assert uns["sample"] == "S1" and uns["mpp"] == 0.5 and uns["slide_mpp"] == 0.25
    assert uns["tissue_area_mm2"] == pytest.approx(0.01)
    assert json.loads(uns["metadata"])["units"]["perimeter_um"] == "µm"
    assert "numpy" in json.loads(uns["versions"])


def test_concat_of_slides(two_slides, tmp_path):
    paths = [two_slides[s][2] for s in ("S1", "S2")]
    joined = concat(paths, tmp_path / "cohort.h5ad")
    back = anndata.read_h5ad(tmp_path / "cohort.h5ad")
    sizes = [anndata.read_h5ad(p).n_obs for p in paths]
    assert back.n_obs == sum(sizes) == joined.n_obs
    assert back.obs["sample"].value_counts().to_dict() == {"S1": sizes[0], "S2": sizes[1]}
    assert back.obs_names.is_unique and back.obs_names[0].endswith(":S1")
    assert back.obsp["spatial_connectivities"].shape == (back.n_obs, back.n_obs)
    # block-diagonal: no edge between slides
    conn = back.obsp["spatial_connectivities"].tocoo()
    assert ((conn.row < sizes[0]) == (conn.col < sizes[0])).all()
    assert set(back.uns["histoflow"]["slides"]) == {"S1", "S2"}
    assert list(back.obs["class_name"].cat.categories) == ["Tumour", "Lymphocyte"]


def test_concat_command_line(two_slides, tmp_path, capsys):
    out = tmp_path / "c.h5ad"
    paths = [str(two_slides[s][2]) for s in ("S1", "S2")]
    assert cells_main(["concat", "-o", str(out), *paths]) == 0
    assert "from 2 slides" in capsys.readouterr().out
    assert anndata.read_h5ad(out).n_obs > 0
    # the same slide twice, or a file that is not AnnData: one line, status 1
    assert cells_main(["concat", "-o", str(out), paths[0], paths[0]]) == 1
    bad = tmp_path / "bad.h5ad"
    bad.write_text("no")
    assert cells_main(["concat", "-o", str(out), str(bad)]) == 1
    assert "not a readable AnnData" in capsys.readouterr().err
    with pytest.raises(AnnDataError):
        concat([])
