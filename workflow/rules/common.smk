# Shared by every stage: config and sample-sheet validation, the path layout, and the
# input functions. Functions only (snakemake --lint wants no functions in files with
# rules); the stage files include nothing else.
import functools
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))

from histoflow.config import load_sample_sheet, validate_config  # noqa: E402
from histoflow.report_safe import encode as report_safe  # noqa: E402
from histoflow.paths import (  # noqa: E402
    BENCHMARKS,
    COHORT as COHORT_ID,
    LOGS,
    MULTIQC_SECTIONS,
    CohortPaths,
    SamplePaths,
    benchmark_path,
    log_path,
)

# ---- config and sample sheet (validated first: errors name the field) ----

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


# ---- paths: every file name comes from histoflow.paths ----

COHORT = CohortPaths()
COHORT_MULTIQC = [str(COHORT.multiqc(section)) for section in MULTIQC_SECTIONS]


def sample_path(name, *args):
    # The pattern of one per-sample file, with the {sample} wildcard.
    return SamplePaths.pattern(name, *args)


def rule_log(rule):
    return str(log_path(rule, "{sample}"))


def rule_benchmark(rule):
    return str(benchmark_path(rule, "{sample}"))


# ---- targets ----

# Each stage file registers the path patterns of its final files:
# STAGE_TARGETS["<stage>"] = [...] (or a function of the sample).
STAGE_TARGETS = {}


def stage_targets(stage, samples):
    found = STAGE_TARGETS.get(stage, [])
    if callable(found):
        return [target for sample in samples for target in found(sample)]
    return expand(found, sample=samples)


def final_targets():
    targets = []
    for stage in config["stages"]:
        if stage not in STAGE_TARGETS:
            raise ValueError(f"config field 'stages': stage '{stage}' has no rules yet")
        targets.extend(stage_targets(stage, reported_samples()))
    return targets


# `snakemake --report` builds the DAG of the same targets and stops at the first report
# file a failed slide never wrote. When reporting, only slides whose results are all
# there take part; the cohort table (written after the failed run) lists the others.
REPORTING = "--report-after-run" not in sys.argv and any(
    arg == "--report" or arg.startswith("--report=") for arg in sys.argv
)


def slide_finished(sample):
    return all(
        Path(target).exists()
        for stage in config["stages"]
        if stage != "cohort"
        for target in stage_targets(stage, [sample])
    )


@functools.cache
def reported_samples():
    if not REPORTING:
        return list(SAMPLES.index)
    done = [sample for sample in SAMPLES.index if slide_finished(sample)]
    left = [sample for sample in SAMPLES.index if sample not in done]
    if left:
        logger.warning(
            f"report: {len(left)} slide(s) not finished, left out: {', '.join(left)}"
        )
    return done


# ---- intermediate stores (config keep) ----

# The stages that read each store (directly or through the next store).
STORE_READERS = {
    "raw": ("merge", "instances", "export"),
    "maps": ("instances", "export"),
}


def store_is_temporary(store):
    # Removed once read, unless kept; a store no later stage asks for is the result.
    readers = STORE_READERS[store]
    return store not in config["keep"] and any(s in config["stages"] for s in readers)


def store_output(store, path):
    return temp(directory(path)) if store_is_temporary(store) else directory(path)


def store_targets(store, path):
    # A temporary store is not a final target, as Snakemake keeps every final target.
    return [] if store_is_temporary(store) else [path]


def get_sample_outputs(wildcards):
    # Final files of this slide from every enabled per-slide stage: the manifest is
    # written after them and lists what they are.
    targets = []
    for stage in config["stages"]:
        if stage != "cohort":
            targets += stage_targets(stage, [wildcards.sample])
    return targets


# ---- the sample sheet's fields ----


def sample_row(wildcards):
    return SAMPLES.loc[wildcards.sample]


def existing(path):
    # A missing file stays out of the job's inputs, so Snakemake still schedules the
    # other samples; the job itself then fails with a message naming sample and file.
    return [path] if path and Path(path).exists() else []


def get_slide(wildcards):
    return existing(sample_row(wildcards)["path"])


# Params that hold user text (paths, sheet rows) go through report_safe: the HTML of
# `snakemake --report` embeds params unescaped (histoflow.report_safe).
def get_slide_path(wildcards):
    return report_safe(str(sample_row(wildcards)["path"]))


def get_user_mask(wildcards):
    return existing(sample_row(wildcards)["mask"])


def get_user_mask_path(wildcards):
    mask = sample_row(wildcards)["mask"]
    return report_safe(str(mask)) if mask else ""


def file_identity(path):
    # Size, mtime and content hash of an input (histoflow.manifest.fingerprint.identity):
    # as a params value it reruns a rule whose slide, mask or model file was replaced,
    # whatever the replacement's mtime (a restored backup, cp -p).
    if not path or not Path(path).exists():
        return None
    from histoflow.manifest.fingerprint import identity

    try:
        return report_safe(identity(path))
    except OSError as exc:  # unreadable: the job reports it, naming sample and file
        return report_safe(
            {"path": str(path), "error": exc.strerror or type(exc).__name__}
        )


def get_slide_identity(wildcards):
    return file_identity(sample_row(wildcards)["path"])


def get_user_mask_identity(wildcards):
    return file_identity(sample_row(wildcards)["mask"])


def files_identity(paths):
    return [file_identity(path) for path in paths]


def get_model_identity(wildcards):
    return files_identity(get_model_files(wildcards))


def sheet_record(sample):
    # One cast of a sheet row to plain values (the params rerun trigger ignores numpy
    # scalars), shared with the manifest.
    from histoflow.manifest.sheet import sheet_record as cast_row

    return cast_row(SAMPLES.loc[sample])


def get_sample_mpp(wildcards):
    return sheet_record(wildcards.sample)["mpp"]


def sheet_records():
    return {str(sample): sheet_record(sample) for sample in SAMPLES.index}


def get_sheet_record(wildcards):
    return report_safe(sheet_record(wildcards.sample))


# ---- the model ----


def get_model_files(wildcards):
    # A card given as a path (and the TorchScript/weights file it names) is an input,
    # so replacing the model reruns inference; built-in cards live in the package.
    # model.weights is an input too; a missing one is left out, so that the job reports
    # it naming the config field.
    spec, weights = config["model"]["card"], config["model"]["weights"]
    files = [weights] if weights and Path(weights).is_file() else []
    if spec.startswith("builtin:") or not Path(spec).is_file():
        return files
    from histoflow.models.card import load_card

    return [str(p) for p in load_card(spec).files()] + files


def get_stain_target(wildcards):
    # The target image is an input, so replacing it reruns inference; a missing one is
    # left out, so that the job reports it naming the config field.
    spec = config["inference"].get("stain_normalisation")
    target = spec["target"] if spec else None
    return [target] if target and Path(target).is_file() else []


def card_has_semantic_task():
    # extract_instances writes classmap.zarr only for a card with a semantic task.
    # A card that does not load is reported by the job that uses it, not here.
    from histoflow.errors import HistoflowError
    from histoflow.models.card import load_card

    try:
        card = load_card(config["model"]["card"]).card
    except HistoflowError:
        return False
    return any(
        task.get("method") == "semantic" for task in card.get("postprocess") or []
    )


# ---- the dry run's expected bytes ----

DENSE_STAGES = ("infer", "merge", "instances", "cells", "export")


def log_expected_bytes():
    # `snakemake -n` lists the uncompressed size of every slide's raw.zarr and
    # maps.zarr (histoflow.inference.expected), from its mask once mask_tissue has run.
    if not any(stage in config["stages"] for stage in DENSE_STAGES):
        return
    from histoflow.errors import HistoflowError
    from histoflow.inference.expected import expected_bytes, format_table
    from histoflow.models.card import load_card

    try:
        card = load_card(config["model"]["card"], config["model"].get("weights"))
    except HistoflowError as exc:
        logger.warning(f"expected bytes: not estimated, {exc}")
        return
    if card.card["kind"] != "dense":
        return
    rows, errors = [], {}
    for sample in SAMPLES.index:
        record = sheet_record(sample)
        try:
            rows.append(
                expected_bytes(
                    str(sample),
                    record["path"],
                    card,
                    config["inference"],
                    config["merge"]["encoding"],
                    mpp=record["mpp"],
                )
            )
        except (HistoflowError, OSError) as exc:
            errors[str(sample)] = str(exc)
    logger.info(format_table(rows, errors, "results"))


# ---- provenance and the cohort table ----


def slide_config():
    # The effective config of every slide: validated, defaults filled in. The sheet
    # path is left out: the same slide in another sheet has the same provenance.
    return report_safe(
        {key: value for key, value in config.items() if key != "samples"}
    )


def write_summary_after_error():
    # After a failed run (keep-going) the cohort_summary and cohort_report jobs cannot
    # run, as their inputs are missing. Write the table and the report anyway, so failed
    # slides show up with their error, and backdate them, so the next run rebuilds them
    # through the rules.
    if "cohort" not in config["stages"]:
        return
    rules = {job.rule.name for job in workflow.dag.jobs}
    if "cohort_summary" in rules:
        from histoflow.cohort import write_summary

        tsv, html, cells = COHORT.summary_tsv, COHORT.summary_html, COHORT.cells_tsv
        backdate_after_error(
            "cohort summary",
            lambda: write_summary(sheet_records(), tsv, html, cells_path=cells),
            [tsv, html, cells],
        )
    if "cohort_report" in rules:
        from histoflow.report.build import write_report
        from histoflow.report.settings import ReportSettings

        settings = ReportSettings.from_config(config["report"])
        backdate_after_error(
            "cohort report",
            lambda: write_report(sheet_records(), settings=settings),
            [COHORT.report_html, *COHORT_MULTIQC],
        )


def backdate_after_error(what, write, paths):
    try:
        write()
        for path in paths:
            os.utime(path, (0, 0))
    except Exception as exc:  # a report of the failure must not hide the failure
        logger.warning(f"{what} not written after the failed run: {exc}")
        return
    logger.warning(f"{what} with failed slides written to {paths[0]}")
