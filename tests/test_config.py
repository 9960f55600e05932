"""Config and sample-sheet validation: every error names the field (and row/sample)."""

import copy
import re

import pytest
import yaml
from conftest import REPO, write_sheet
from histoflow.config import load_sample_sheet, schema_defaults, schema_keys, validate_config
from histoflow.errors import ConfigError


@pytest.fixture
def config():
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_shipped_config_is_valid_and_defaults_fill_in(config):
    validate_config(config)
    empty = {}
    validate_config(empty)
    assert empty["mask"]["thumbnail_mpp"] == config["mask"]["thumbnail_mpp"]
    assert empty["samples"] == "config/samples.tsv"


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda c: c.update(colour="red"), "colour"),
        (lambda c: c["mask"].update(thumbnal_mpp=4), "mask.thumbnal_mpp"),
        (lambda c: c["mask"].update(thumbnail_mpp=-1), "mask.thumbnail_mpp"),
        (lambda c: c["mask"].update(min_threshold=2), "mask.min_threshold"),
        (lambda c: c["mask"].update(channel="blue"), "mask.channel"),
        (lambda c: c.update(stages=["mask", "paint"]), "stages.1"),
    ],
)
def test_bad_config_names_the_field(config, change, field):
    bad = copy.deepcopy(config)
    change(bad)
    with pytest.raises(ConfigError, match=rf"config field '{field}'"):
        validate_config(bad)


def test_shipped_sheet_is_valid():
    sheet = load_sample_sheet(REPO / "config" / "samples.tsv")
    assert list(sheet.index) == ["CMU-1-Small-Region"]
    assert sheet.loc["CMU-1-Small-Region", "mpp"] is None


def test_sheet_values_are_typed(tmp_path):
    sheet = load_sample_sheet(
        write_sheet(tmp_path / "s.tsv", [{"sample": "a", "path": "x.png", "mpp": "0.25"}])
    )
    assert sheet.loc["a", "mpp"] == 0.25 and isinstance(sheet.loc["a", "mpp"], float)


@pytest.mark.parametrize(
    "rows, pattern",
    [
        (
            [{"sample": "a", "path": "x"}, {"sample": "a", "path": "y"}],
            r"duplicate ID 'a' on lines 2 and 3",
        ),
        ([{"sample": "a b", "path": "x"}], r"line 2 \(sample 'a b'\): field 'sample'"),
        ([{"sample": "../evil", "path": "x"}], r"field 'sample'"),
        ([{"sample": "..", "path": "x"}], r"field 'sample'"),
        ([{"sample": "a/b", "path": "x"}], r"field 'sample'"),
        (
            [{"sample": "ok", "path": "x", "mpp": "fast"}],
            r"sample 'ok'\): field 'mpp': 'fast' is not a number",
        ),
        ([{"sample": "ok", "path": "x", "mpp": "-1"}], r"sample 'ok'\): field 'mpp'"),
        ([{"sample": "ok"}], r"line 2 \(sample 'ok'\): field 'path': required"),
    ],
)
def test_bad_sheet_names_row_and_field(tmp_path, rows, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_sample_sheet(write_sheet(tmp_path / "s.tsv", rows))


def test_missing_column_is_named(tmp_path):
    (tmp_path / "s.tsv").write_text("sample\tslide\na\tx.svs\n")
    with pytest.raises(ConfigError, match="missing column 'path'"):
        load_sample_sheet(tmp_path / "s.tsv")


def test_unknown_column_is_named(tmp_path):
    (tmp_path / "s.tsv").write_text("sample\tpath\tstain\na\tx.svs\tHE\n")
    with pytest.raises(ConfigError, match=r"unknown column.*'stain'"):
        load_sample_sheet(tmp_path / "s.tsv")


def test_missing_sheet_names_config_field(tmp_path):
    with pytest.raises(ConfigError, match="config field 'samples'"):
        load_sample_sheet(tmp_path / "nope.tsv")


def test_sheet_refuses_the_reserved_cohort_id(tmp_path):
    with pytest.raises(ConfigError, match=r"field 'sample': 'cohort' is reserved"):
        load_sample_sheet(write_sheet(tmp_path / "s.tsv", [{"sample": "cohort", "path": "x"}]))


def test_every_schema_key_is_described():
    undescribed = [key for key, sub in schema_keys().items() if not sub.get("description")]
    assert undescribed == []


def test_config_readme_documents_exactly_the_schema_keys():
    text = (REPO / "config" / "README.md").read_text()
    documented = re.findall(r"^\| `([\w.]+)` \|", text, re.M)
    assert len(documented) == len(set(documented)), "a key is documented twice"
    assert sorted(documented) == sorted(schema_keys())


def test_schema_defaults_fill_nested_sections():
    assert schema_defaults("mask")["thumbnail_mpp"] == 4.0
    assert schema_defaults("export")["heatmap"] == schema_defaults("export.heatmap")
    assert schema_defaults("export.heatmap")["tile"] == 256
