"""AnnData of one slide's cells (`cells/cells.h5ad`), and the concatenation of many.

Layout (scanpy/squidpy conventions):

- `X`: float32 (cells x measurements), `var_names` the measurement columns of
  cells.parquet, `var["unit"]` and `var["kind"]` (shape / intensity);
- `obs` (index: the instance id): `task`, `class_name` (categorical, declared order),
  `class_id`, `probability`, the neighbour counts and `delaunay_degree`;
- `obsm["spatial"]`: centroids in µm (x, y); `obsm["spatial_px"]`: level-0 pixels;
- `obsp["spatial_connectivities"]` / `obsp["spatial_distances"]` (µm): the Delaunay
  graph, symmetric, with `uns["spatial_neighbors"]` naming them as squidpy's
  `spatial_neighbors` does, so `squidpy.gr.nhood_enrichment(adata, "class_name")` runs
  as is;
- `uns["class_name_colors"]`: the card's class colours; `uns["histoflow"]`: sample,
  model, mpp, slide mpp, neighbour radius, tissue area and `metadata` (the cell table's
  metadata as JSON, stain matrix and units included) and `versions`.

`concat` joins slides with `obs["sample"]` and ids made unique as `<id>:<sample>`.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from histoflow.cells.measure import MEASUREMENT_COLUMNS, SHAPE_COLUMNS
from histoflow.errors import HistoflowError
from histoflow.export.instances import parse_color
from histoflow.io.atomic import atomic_output
from histoflow.io.cell_table import UNITS, open_cell_table, read_graph

OBS_COLUMNS = ("task", "class_name", "class_id", "probability")
CONNECTIVITIES = "spatial_connectivities"
DISTANCES = "spatial_distances"


class AnnDataError(HistoflowError):
    """AnnData files cannot be built or joined; the message names the file."""


@contextlib.contextmanager
def object_strings():
    """pandas 3 makes strings Arrow-backed, which anndata 0.12.6 (the last release that
    installs beside pandas 3 on Python 3.11) cannot write: build and write frames with
    plain object strings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            option = pd.option_context("future.infer_string", False)
        except (KeyError, ValueError, pd.errors.OptionError):  # the option is gone
            option = contextlib.nullcontext()
        with option:
            yield


def _strings(values) -> np.ndarray:
    return np.asarray([str(v) for v in values], dtype=object)


def _hex(rgb) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _class_categories(meta: dict, names: np.ndarray) -> tuple[list[str], list[str]]:
    """Class names in declared order (others after, sorted) and their colours."""
    declared = list(meta.get("neighbour_classes") or [])
    colours = {}
    for classes in meta.get("tasks", {}).values():
        for i, c in enumerate(classes):
            colours.setdefault(c["name"], _hex(parse_color(c.get("color"), i)))
    cats = declared + sorted(set(names.tolist()) - set(declared))
    return cats, [colours.get(c, _hex(parse_color(None, i))) for i, c in enumerate(cats)]


def _graph_matrices(graph_path, n: int):
    from scipy import sparse

    edges, _ = read_graph(graph_path)
    s = edges["source"].to_numpy()
    t = edges["target"].to_numpy()
    d = edges["length_um"].to_numpy().astype(np.float64)
    rows, cols = np.r_[s, t], np.r_[t, s]
    conn = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    dist = sparse.csr_matrix((np.r_[d, d], (rows, cols)), shape=(n, n))
    return conn, dist


def build_anndata(
    cells_path: str | Path,
    graph_path: str | Path | None = None,
    tissue_area_mm2: float | None = None,
):
    """The AnnData of one slide from its cells.parquet (and graph.parquet)."""
    with object_strings():
        return _build(cells_path, graph_path, tissue_area_mm2)


def _build(cells_path, graph_path, tissue_area_mm2):
    import anndata

    from histoflow.versions import package_versions

    table = open_cell_table(cells_path)
    frame = table.read().to_pandas()
    meta = table.meta
    obs = frame[[*OBS_COLUMNS, *table.neighbour_columns, "delaunay_degree"]].copy()
    # Plain object strings: h5ad has no writer for pandas' Arrow-backed strings.
    obs.index = pd.Index(_strings(frame["id"]), dtype=object, name="id")
    names = _strings(obs["class_name"])
    cats, colours = _class_categories(meta, names)
    obs["class_name"] = pd.Categorical(names, categories=pd.Index(cats, dtype=object))
    tasks = pd.Index(list(meta.get("tasks", {})), dtype=object)
    obs["task"] = pd.Categorical(_strings(obs["task"]), categories=tasks)
    var = pd.DataFrame(
        {
            "unit": _strings(UNITS[c] for c in MEASUREMENT_COLUMNS),
            "kind": _strings(
                "shape" if c in SHAPE_COLUMNS else "intensity" for c in MEASUREMENT_COLUMNS
            ),
        },
        index=pd.Index(MEASUREMENT_COLUMNS, dtype=object, name="measurement"),
    )
    adata = anndata.AnnData(
        X=frame[list(MEASUREMENT_COLUMNS)].to_numpy(np.float32), obs=obs, var=var
    )
    adata.obsm["spatial"] = frame[["centroid_x_um", "centroid_y_um"]].to_numpy(np.float64)
    adata.obsm["spatial_px"] = frame[["centroid_x", "centroid_y"]].to_numpy(np.float64)
    if graph_path is not None:
        conn, dist = _graph_matrices(graph_path, len(frame))
        adata.obsp[CONNECTIVITIES], adata.obsp[DISTANCES] = conn, dist
        adata.uns["spatial_neighbors"] = {
            "connectivities_key": CONNECTIVITIES,
            "distances_key": DISTANCES,
            "params": {"coord_type": "generic", "delaunay": True, "units": "µm"},
        }
    adata.uns["class_name_colors"] = colours
    adata.uns["histoflow"] = _uns(meta, tissue_area_mm2, package_versions())
    return adata


def _uns(meta: dict, tissue_area_mm2, versions: dict) -> dict:
    """uns["histoflow"]: scalars for quick access, everything else as JSON text (h5ad
    stores no None and no lists of mappings)."""
    scalars = {
        "sample": meta.get("sample"),
        "model": meta.get("model"),
        "mpp": meta.get("mpp"),
        "slide_mpp": meta.get("slide_mpp"),
        "neighbour_radius_um": meta.get("neighbour_radius_um"),
        "tissue_area_mm2": tissue_area_mm2,
    }
    out = {k: v for k, v in scalars.items() if v is not None}
    out["metadata"] = json.dumps(meta, sort_keys=True)
    out["versions"] = json.dumps(versions, sort_keys=True)
    return out


def write_h5ad(adata, path: str | Path) -> Path:
    """Write `adata` atomically, gzip-compressed."""
    with atomic_output(path) as tmp, object_strings():
        adata.write_h5ad(tmp, compression="gzip")
    return Path(path)


def export_anndata(
    cells_path: str | Path,
    graph_path: str | Path | None,
    out_path: str | Path,
    mask_json: str | Path | None = None,
) -> Path:
    """The stage: cells.parquet (+ graph, + the mask's tissue area) -> cells.h5ad."""
    area = None
    if mask_json is not None:
        from histoflow.io.mask_files import read_mask_meta

        area = read_mask_meta(mask_json).get("tissue_area_mm2")
    return write_h5ad(build_anndata(cells_path, graph_path, area), out_path)


def concat(paths: list[str | Path], out_path: str | Path | None = None):
    """One AnnData of many slides' files: `obs["sample"]`, ids `<id>:<sample>`, the
    graphs block-diagonal, `uns["histoflow"]["slides"]` each slide's uns. Written to
    `out_path` when given; returned."""
    with object_strings():
        joined = _concat(paths)
    if out_path is not None:
        write_h5ad(joined, out_path)
    return joined


def _concat(paths):
    import anndata

    if not paths:
        raise AnnDataError("concat: no AnnData files given")
    adatas, samples = [], []
    for path in paths:
        try:
            adata = anndata.read_h5ad(path)
        except (OSError, ValueError, KeyError) as exc:
            raise AnnDataError(f"file '{path}': not a readable AnnData file ({exc})") from exc
        sample = str(adata.uns.get("histoflow", {}).get("sample") or Path(path).parent.parent.name)
        if sample in samples:
            raise AnnDataError(f"file '{path}': sample '{sample}' given twice")
        adatas.append(adata)
        samples.append(sample)
    joined = anndata.concat(
        adatas, label="sample", keys=samples, index_unique=":", pairwise=True, merge="same"
    )
    joined.obs["sample"] = pd.Categorical(joined.obs["sample"], categories=samples)
    cats = list(dict.fromkeys(c for a in adatas for c in a.obs["class_name"].cat.categories))
    joined.obs["class_name"] = pd.Categorical(joined.obs["class_name"], categories=cats)
    colours = {}
    for a in adatas:
        colours.update(zip(a.obs["class_name"].cat.categories, a.uns["class_name_colors"]))
    joined.uns["class_name_colors"] = [colours[c] for c in cats]
    if all("spatial_neighbors" in a.uns for a in adatas):
        joined.uns["spatial_neighbors"] = dict(adatas[0].uns["spatial_neighbors"])
    slides = {s: dict(a.uns["histoflow"]) for s, a in zip(samples, adatas)}
    joined.uns["histoflow"] = {"slides": slides}
    return joined
