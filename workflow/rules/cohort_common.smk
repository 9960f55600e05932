# Helpers of the cohort stage (functions only: snakemake --lint wants no functions
# in files with rules). Included by cohort.smk.
import os

if "cohort" in SAMPLES.index:
    # results/cohort/ holds the cohort table; a slide of that name would share it.
    from histoflow.errors import ConfigError

    raise ConfigError(
        f"sample sheet '{config['samples']}': field 'sample': 'cohort' is reserved "
        "(results/cohort/ holds the cohort table); rename the sample"
    )


def sheet_record(sample):
    # Plain Python types: numpy scalars would escape the params rerun trigger.
    row = SAMPLES.loc[sample]
    mpp = row["mpp"]
    return {
        "path": str(row["path"]),
        "mpp": float(mpp) if mpp else None,
        "mask": str(row["mask"]) if row["mask"] else None,
    }


def sheet_records():
    return {str(sample): sheet_record(sample) for sample in SAMPLES.index}


def get_sheet_record(wildcards):
    return sheet_record(wildcards.sample)


def slide_config():
    # The effective config of every slide: validated, defaults filled in. The sheet
    # path is left out: the same slide in another sheet has the same provenance.
    return {key: value for key, value in config.items() if key != "samples"}


def get_sample_outputs(wildcards):
    # Final files of this slide from every enabled per-slide stage: the manifest is
    # written after them and lists what they are.
    targets = []
    for stage in config["stages"]:
        if stage == "cohort":
            continue
        found = STAGE_TARGETS.get(stage, [])
        # Patterns per the contract in common.smk; some stages register a function.
        if callable(found):
            targets += list(found(wildcards.sample))
        else:
            targets += expand(found, sample=wildcards.sample)
    return targets


def write_summary_after_error():
    # After a failed run (keep-going) the cohort_summary job cannot run, as its
    # inputs are missing. Write the table anyway, so failed slides show up with their error,
    # and backdate it, so the next run rebuilds it through the rule.
    if "cohort" not in config["stages"]:
        return
    if not any(job.rule.name == "cohort_summary" for job in workflow.dag.jobs):
        return
    from histoflow.cohort import write_summary

    tsv, html = "results/cohort/summary.tsv", "results/cohort/summary.html"
    try:
        write_summary(sheet_records(), tsv, html)
        for path in (tsv, html):
            os.utime(path, (0, 0))
    except Exception as exc:  # a report of the failure must not hide the failure
        logger.warning(f"cohort summary not written after the failed run: {exc}")
        return
    logger.warning(f"cohort summary with failed slides written to {tsv}")
