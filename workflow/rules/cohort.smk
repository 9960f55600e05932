# Cohort stage: a provenance manifest per slide, the cohort table, and the report.
# Needs the other stages' STAGE_TARGETS, so it is included after them.


include: "cohort_common.smk"


report: "../report/workflow.rst"


STAGE_TARGETS["cohort"] = [
    "results/{sample}/manifest.json",
    "results/cohort/summary.tsv",
    "results/cohort/summary.html",
]


rule write_manifest:
    input:
        outputs=get_sample_outputs,
        slide=get_slide,
        user_mask=get_user_mask,
    output:
        manifest="results/{sample}/manifest.json",
        run="results/{sample}/run.json",
    log:
        "logs/write_manifest/{sample}.log",
    benchmark:
        "benchmarks/write_manifest/{sample}.tsv"
    conda:
        "../../envs/geometry.yaml"
    threads: 1
    resources:
        mem_mb=500,
    params:
        sheet=get_sheet_record,
        effective_config=slide_config(),
        # sha256 of the whole slide; "fast" hashes the first and last MB and the size.
        checksum="sha256",
        benchmarks="benchmarks",
    script:
        "../../scripts/write_manifest.py"


rule cohort_summary:
    input:
        manifests=expand("results/{sample}/manifest.json", sample=SAMPLES.index),
    output:
        tsv=report(
            "results/cohort/summary.tsv",
            caption="../report/cohort_summary.rst",
            category="Cohort",
            labels={"table": "summary (TSV)"},
        ),
        html=report(
            "results/cohort/summary.html",
            caption="../report/cohort_summary.rst",
            category="Cohort",
            labels={"table": "summary"},
        ),
    log:
        "logs/cohort_summary/cohort.log",
    conda:
        "../../envs/geometry.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        sheet=sheet_records(),
        logs="logs",
        benchmarks="benchmarks",
    script:
        "../../scripts/cohort_summary.py"


# A few small files per slide: not worth a cluster job and its queueing.
localrules:
    cohort_summary,


onerror:
    write_summary_after_error()
