"""The demo cohort writes the cells stage's files: measurements, graph, AnnData, QuPath
cells and the cohort's per-class cells table, all readable and consistent."""

from __future__ import annotations

import json

import anndata
import pandas as pd
import pytest
from conftest import DEMO_SAMPLE
from histoflow.io.cell_table import read_graph

pytestmark = pytest.mark.e2e


def test_demo_writes_the_cells(demo_run):
    res = demo_run / "results" / DEMO_SAMPLE
    cells = pd.read_parquet(res / "cells" / "cells.parquet")
    instances = pd.read_parquet(res / "instances" / "instances.parquet")
    assert len(cells) == len(instances) > 1000
    assert cells["area_um2"].median() > 5 and cells["hematoxylin_od_mean"].median() > 0.2
    assert cells["neighbours_total"].max() > 0
    edges, meta = read_graph(res / "cells" / "graph.parquet")
    assert edges.num_rows > len(cells) and meta["sample"] == DEMO_SAMPLE
    adata = anndata.read_h5ad(res / "cells" / "cells.h5ad")
    assert adata.n_obs == len(cells) and adata.obsm["spatial"].shape == (len(cells), 2)
    doc = json.loads((res / "export" / f"{DEMO_SAMPLE}.cells.geojson").read_text())
    assert len(doc["features"]) == len(cells)
    assert doc["features"][0]["properties"]["objectType"] == "cell"
    summary = pd.read_csv(demo_run / "results" / "cohort" / "cells.tsv", sep="\t")
    assert summary["cells"].sum() == len(cells)
