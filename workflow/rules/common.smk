# Config and sample-sheet loading, and the input functions shared by all stages.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))

from histoflow.config import load_sample_sheet, validate_config  # noqa: E402

validate_config(config)
SAMPLES = load_sample_sheet(config["samples"])
for _sample in SAMPLES.index:
    for _field in ("path", "mask"):
        _value = SAMPLES.loc[_sample, _field]
        if _value and not Path(_value).exists():
            logger.warning(
                f"sample '{_sample}': {_field} file '{_value}' not found; "
                "its jobs will fail, the other samples still run"
            )


wildcard_constraints:
    sample="[A-Za-z0-9._-]+",


# Each stage file registers the path patterns ("results/{sample}/...") of its final
# files: STAGE_TARGETS["<stage>"] = [...]. (Lint wants no functions in rule files.)
STAGE_TARGETS = {}


def final_targets():
    targets = []
    for stage in config["stages"]:
        if stage not in STAGE_TARGETS:
            raise ValueError(f"config field 'stages': stage '{stage}' has no rules yet")
        targets.extend(expand(STAGE_TARGETS[stage], sample=SAMPLES.index))
    return targets


def sample_row(wildcards):
    return SAMPLES.loc[wildcards.sample]


def existing(path):
    # A missing file stays out of the job's inputs, so Snakemake still schedules the
    # other samples; the job itself then fails with a message naming sample and file.
    return [path] if path and Path(path).exists() else []


def get_slide(wildcards):
    return existing(sample_row(wildcards)["path"])


def get_slide_path(wildcards):
    return str(sample_row(wildcards)["path"])


def get_user_mask(wildcards):
    return existing(sample_row(wildcards)["mask"])


def get_user_mask_path(wildcards):
    mask = sample_row(wildcards)["mask"]
    return str(mask) if mask else ""


def get_sample_mpp(wildcards):
    # Cast: a numpy scalar would be ignored by the params rerun trigger.
    mpp = sample_row(wildcards)["mpp"]
    return float(mpp) if mpp else None


def get_model_files(wildcards):
    # A card given as a path (and the TorchScript/weights file it names) is an input,
    # so replacing the model reruns inference; built-in cards live in the package.
    spec = config["model"]["card"]
    if spec.startswith("builtin:") or not Path(spec).is_file():
        return []
    from histoflow.models.card import load_card

    return [str(p) for p in load_card(spec).files()]
