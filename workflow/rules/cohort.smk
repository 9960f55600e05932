# Cohort-level rules: per-slide manifest, cohort summary, report (see README.md).
# Register final files as path patterns (no functions in rule files, snakemake --lint):
#   STAGE_TARGETS["cohort"] = ["results/cohort/summary.tsv"]
