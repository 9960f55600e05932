# Rules of the infer stage (see workflow/CONTRACTS.md).
# Register the final files for rule all as path patterns, NOT a function
# (snakemake --lint forbids functions in rule files; helpers go in common.smk):
#   STAGE_TARGETS["infer"] = ["results/{sample}/...", ...]
