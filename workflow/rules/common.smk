# Config and sample-sheet loading, and the input functions shared by all stages.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))

from histoflow.config import load_sample_sheet, validate_config  # noqa: E402

validate_config(config)
SAMPLES = load_sample_sheet(config["samples"])


wildcard_constraints:
    sample="[A-Za-z0-9._-]+",


# Each stage file registers a function sample -> list of final files for rule all.
STAGE_TARGETS = {}


def final_targets():
    targets = []
    for stage in config["stages"]:
        if stage not in STAGE_TARGETS:
            raise ValueError(f"config field 'stages': stage '{stage}' has no rules yet")
        for sample in SAMPLES.index:
            targets.extend(STAGE_TARGETS[stage](sample))
    return targets


def sample_row(wildcards):
    return SAMPLES.loc[wildcards.sample]


def get_slide(wildcards):
    return sample_row(wildcards)["path"]


def get_user_mask(wildcards):
    mask = sample_row(wildcards)["mask"]
    return [mask] if mask else []


def get_sample_mpp(wildcards):
    # Cast: a numpy scalar would be ignored by the params rerun trigger.
    mpp = sample_row(wildcards)["mpp"]
    return float(mpp) if mpp else None


def script_path(name):
    return str(Path(workflow.basedir) / "scripts" / name)
