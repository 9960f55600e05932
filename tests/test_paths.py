"""The per-sample layout: engine attributes and rule patterns name the same files."""

import pickle
from pathlib import Path

import pytest
from histoflow.paths import (
    EXPORTS,
    LAYOUT,
    CohortPaths,
    SamplePaths,
    benchmark_path,
    log_path,
)


def test_attributes_follow_the_layout():
    paths = SamplePaths("S1")
    assert paths.maps_zarr == Path("results/S1/merge/maps.zarr")
    assert paths.mask_json == Path("results/S1/mask/mask.json")
    assert paths.export("tsv") == Path("results/S1/export/S1.objects.tsv")
    assert paths.tile_store("hdf5") == Path("results/S1/tiles/S1.h5")
    assert SamplePaths("S1", results="out").raw_zarr == Path("out/S1/infer/raw.zarr")
    assert set(LAYOUT) <= set(dir(paths))


def test_patterns_carry_the_wildcard():
    assert SamplePaths.pattern("maps_zarr") == "results/{sample}/merge/maps.zarr"
    for fmt in EXPORTS:
        pattern = SamplePaths.pattern("export", fmt)
        assert pattern.format(sample="S1") == str(SamplePaths("S1").export(fmt))


def test_unknown_names_are_errors():
    with pytest.raises(AttributeError, match="no path 'maps'"):
        _ = SamplePaths("S1").maps
    with pytest.raises(KeyError, match="unknown export format 'pdf'"):
        SamplePaths("S1").export("pdf")


def test_pickles_and_other_locations():
    paths = SamplePaths("S1")
    assert pickle.loads(pickle.dumps(paths)) == paths
    assert CohortPaths().summary_tsv == Path("results/cohort/summary.tsv")
    assert log_path("mask_tissue", "S1") == Path("logs/mask_tissue/S1.log")
    assert benchmark_path("mask_tissue", "S1") == Path("benchmarks/mask_tissue/S1.tsv")
