# Cohort stage: a provenance manifest per slide, the cohort table, and the report.
# Needs the other stages' STAGE_TARGETS, so it is included after them.


report: "../report/workflow.rst"


STAGE_TARGETS["cohort"] = [
    sample_path("manifest_json"),
    str(COHORT.summary_tsv),
    str(COHORT.summary_html),
    str(COHORT.report_html),
    *COHORT_MULTIQC,
    str(COHORT.cells_tsv),
]


rule write_manifest:
    input:
        outputs=get_sample_outputs,
        slide=get_slide,
        user_mask=get_user_mask,
    output:
        manifest=sample_path("manifest_json"),
        run=sample_path("run_json"),
    log:
        rule_log("write_manifest"),
    benchmark:
        rule_benchmark("write_manifest")
    conda:
        "../../envs/geometry.yaml"
    threads: 1
    resources:
        mem_mb=500,
    params:
        sheet=get_sheet_record,
        slide_identity=get_slide_identity,
        user_mask_identity=get_user_mask_identity,
        effective_config=slide_config(),
        # sha256 of the whole slide; "fast" hashes the first and last MB and the size.
        checksum="sha256",
        benchmarks=BENCHMARKS,
    script:
        "../../scripts/write_manifest.py"


rule cohort_summary:
    input:
        manifests=expand(sample_path("manifest_json"), sample=reported_samples()),
    output:
        tsv=report(
            str(COHORT.summary_tsv),
            caption="../report/cohort_summary.rst",
            category="Cohort",
            labels={"table": "summary (TSV)"},
        ),
        html=report(
            str(COHORT.summary_html),
            caption="../report/cohort_summary.rst",
            category="Cohort",
            labels={"table": "summary"},
        ),
        cells=str(COHORT.cells_tsv),
    log:
        str(log_path("cohort_summary", COHORT_ID)),
    benchmark:
        str(benchmark_path("cohort_summary", COHORT_ID))
    conda:
        "../../envs/geometry.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        sheet=report_safe(sheet_records()),
        logs=LOGS,
        benchmarks=BENCHMARKS,
    script:
        "../../scripts/cohort_summary.py"


# The cohort page (gallery, table, plots, QC flags) and the MultiQC custom-content
# files; reads the same per-slide files as the table.
rule cohort_report:
    input:
        manifests=expand(sample_path("manifest_json"), sample=reported_samples()),
    output:
        html=str(COHORT.report_html),
        multiqc=COHORT_MULTIQC,
    log:
        str(log_path("cohort_report", COHORT_ID)),
    benchmark:
        str(benchmark_path("cohort_report", COHORT_ID))
    conda:
        "../../envs/geometry.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        sheet=report_safe(sheet_records()),
        settings=report_safe(config["report"]),
        logs=LOGS,
        benchmarks=BENCHMARKS,
    script:
        "../../scripts/cohort_report.py"


# A few small files per slide: not worth a cluster job and its queueing.
localrules:
    cohort_summary,
    cohort_report,


onerror:
    write_summary_after_error()
