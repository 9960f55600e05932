"""Config and sample-sheet validation against the JSON schemas in histoflow/schemas/.

The schemas are package data, read through importlib.resources, so a non-editable
install validates the same way as the checkout.

Errors name the field (config) or the row, sample and column (sheet), so a user
can fix the file without reading a traceback.
"""

from __future__ import annotations

import copy
import os
import re
from functools import cache
from importlib import resources
from pathlib import Path

import jsonschema
import pandas as pd
import yaml

from histoflow.errors import ConfigError

SHEET_COLUMNS = ("sample", "path", "mpp", "mask")
# Resolutions (µm per pixel) a microscope or slide scanner produces: from beyond a 100x
# oil objective (~0.1) to a macro photograph of the whole slide. The sample schema's
# mpp bounds are the same numbers (a test checks it).
MPP_RANGE = (0.05, 100.0)
# Snakemake refuses a wildcard value that ends in a unit repeated this many times or
# more (snakemake.io.PeriodicityDetector, PeriodicWildcardError): it takes it for a
# rule that feeds itself.
PERIODIC_REPEATS = 20
_PERIODIC = re.compile(rf"(.+?)\1{{{PERIODIC_REPEATS - 1},}}$")
# Names Windows reserves for devices, with or without an extension.
_DEVICE_NAMES = re.compile(r"(CON|PRN|AUX|NUL|COM[0-9]|LPT[0-9])(\..*)?", re.IGNORECASE)


def load_schema(name: str) -> dict:
    """The schema `name` (e.g. "config.schema.yaml") shipped in histoflow/schemas/."""
    # A copy: callers may edit it, the cached parse stays as shipped.
    return copy.deepcopy(_read_schema(name))


@cache
def _read_schema(name: str) -> dict:
    text = resources.files("histoflow").joinpath("schemas", name).read_text(encoding="utf-8")
    return yaml.safe_load(text)


def schema_defaults(section: str) -> dict:
    """Default values of one config section ("mask", or nested: "export.heatmap"),
    as the schema declares them; the schema is the only place a default is written.

    Nested sections come filled in too, as validate_config fills an empty config.
    """
    values = validate_config({})
    for key in section.split("."):
        values = values[key]
    return values


def schema_keys(name: str = "config.schema.yaml") -> dict[str, dict]:
    """Every key of the schema `name` by dotted path ("mask.thumbnail_mpp") -> its schema."""
    keys: dict[str, dict] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, sub in node.get("properties", {}).items():
            keys[prefix + key] = sub
            walk(sub, f"{prefix}{key}.")

    walk(load_schema(name), "")
    return keys


def _with_defaults(validator_class):
    """A validator that fills in schema defaults while it validates (jsonschema FAQ recipe)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(prop, _copy(sub["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _copy(value):
    return yaml.safe_load(yaml.safe_dump(value))


DefaultingValidator = _with_defaults(jsonschema.Draft202012Validator)


def _field(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties":
        # The offending key is only in the message; name it as the field.
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        path = ".".join(filter(None, [path, ",".join(extra)]))
    elif error.validator == "required":
        missing = [r for r in error.validator_value if r not in error.instance]
        path = ".".join(filter(None, [path, ",".join(missing)]))
    return path or "(top level)"


def _message(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        return "unknown key (not in the schema; check spelling)"
    if error.validator == "required":
        return "required but missing"
    if error.validator == "not" and "enum" in error.validator_value:
        # A reserved name; the schema's list says which names are taken.
        taken = ", ".join(f"'{v}'" for v in error.validator_value["enum"])
        return f"'{error.instance}' is reserved (taken under results/: {taken}); rename it"
    return error.message


def validate_config(config: dict) -> dict:
    """Validate `config` in place against config.schema.yaml, filling defaults."""
    schema = load_schema("config.schema.yaml")
    errors = sorted(DefaultingValidator(schema).iter_errors(config), key=lambda e: e.path)
    if errors:
        lines = [f"config field '{_field(e)}': {_message(e)}" for e in errors]
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines))
    return config


def load_sample_sheet(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate the sample sheet; returns a frame indexed by sample ID.

    Empty cells become None. Relative slide and mask paths are kept as written
    (Snakemake resolves them against its working directory).
    """
    path = Path(path)
    frame = _read_sheet(path)
    validator = jsonschema.Draft202012Validator(load_schema("samples.schema.yaml"))
    # Line 1 is the header.
    records = [
        _sheet_record(raw, path, line, validator)
        for line, raw in enumerate(frame.to_dict("records"), start=2)
    ]
    if not records:
        raise ConfigError(f"sample sheet '{path}' has no samples")
    _check_unique([r["sample"] for r in records], path)
    rows = [{col: r.get(col) for col in SHEET_COLUMNS} for r in records]
    # object dtype keeps missing values as None (not NaN) and mpp as a Python float.
    sheet = pd.DataFrame(rows, columns=list(SHEET_COLUMNS), dtype=object)
    return sheet.set_index("sample", drop=False)


def _read_sheet(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ConfigError(f"sample sheet not found: '{path}' (config field 'samples')")
    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, comment=None)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ConfigError(f"sample sheet '{path}' is not a readable TSV: {exc}") from exc
    frame.columns = [c.strip() for c in frame.columns]
    for required in ("sample", "path"):
        if required not in frame.columns:
            raise ConfigError(
                f"sample sheet '{path}': missing column '{required}' "
                f"(columns are {', '.join(frame.columns)}; expected tab-separated "
                f"{', '.join(SHEET_COLUMNS)})"
            )
    unknown = [c for c in frame.columns if c not in SHEET_COLUMNS]
    if unknown:
        raise ConfigError(
            f"sample sheet '{path}': unknown column(s) {', '.join(map(repr, unknown))} "
            f"(allowed: {', '.join(SHEET_COLUMNS)})"
        )
    return frame


def _sheet_record(raw: dict, path: Path, line: int, validator) -> dict:
    """One row, stripped, with mpp as a number, checked against samples.schema.yaml."""
    record = {k: v.strip() for k, v in raw.items() if isinstance(v, str) and v.strip() != ""}
    sample = record.get("sample", "?")
    shown = sample if len(sample) <= 40 else f"{sample[:40]}…"  # a 300-character ID
    where = f"sample sheet '{path}' line {line} (sample '{shown}')"
    if "mpp" in record:
        try:
            record["mpp"] = float(record["mpp"])
        except ValueError:
            raise ConfigError(f"{where}: field 'mpp': '{record['mpp']}' is not a number") from None
    errors = sorted(validator.iter_errors(record), key=lambda e: e.path)
    if errors:
        lines = [f"field '{_field(e)}': {_sheet_message(e)}" for e in errors]
        raise ConfigError(f"{where}: " + "; ".join(lines))
    problem = sample_id_problem(record["sample"])
    if problem:
        raise ConfigError(f"{where}: field 'sample': {problem}")
    return record


def _sheet_message(error: jsonschema.ValidationError) -> str:
    field = _field(error)
    if field == "sample" and error.validator == "maxLength":
        return (
            f"ID is {len(error.instance)} characters long, more than {error.validator_value} "
            "(file names are limited to 255 bytes and the workflow adds up to about 100 "
            "around the ID); shorten it"
        )
    if field == "mpp" and error.validator in ("minimum", "maximum"):
        low, high = MPP_RANGE
        return (
            f"{error.instance:g} µm/px is outside what a microscope produces "
            f"({low:g} to {high:g} µm/px); check the unit (µm per pixel at level 0)"
        )
    return _message(error)


def sample_id_problem(sample: str) -> str | None:
    """Why Snakemake or a file system would refuse the sample ID `sample`, or None.

    The schema checks characters, length and reserved names; this adds the rules a
    pattern cannot say clearly: Snakemake's periodic-wildcard check and Windows
    device names.
    """
    match = _PERIODIC.search(sample)
    if match:
        unit = match.group(1)
        count = len(match.group(0)) // len(unit)
        return (
            f"ID '{sample}' ends in '{unit}' repeated {count} times; Snakemake refuses "
            f"an ending repeated {PERIODIC_REPEATS} or more times (PeriodicWildcardError); "
            "shorten the repetition"
        )
    if _DEVICE_NAMES.fullmatch(sample):
        return f"'{sample}' is a name Windows reserves for a device; rename it"
    return None


def _check_unique(ids: list[str], path: Path) -> None:
    seen: dict[str, int] = {}
    for i, sample in enumerate(ids):
        if sample in seen:
            raise ConfigError(
                f"sample sheet '{path}': field 'sample': duplicate ID '{sample}' "
                f"on lines {seen[sample] + 2} and {i + 2}"
            )
        seen[sample] = i
