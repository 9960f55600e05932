# histoflow: whole-slide image inference for a cohort of slides.
# Stages (one .smk each): mask_tissue -> infer_patches -> merge_patches
# -> extract_instances -> measure_cells -> export_{fmt}. See README.md and workflow/CONTRACTS.md.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/mask.smk"
include: "workflow/rules/infer.smk"
include: "workflow/rules/merge.smk"
include: "workflow/rules/instances.smk"
include: "workflow/rules/cells.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/cohort.smk"
include: "workflow/rules/tiles.smk"


if workflow.output_settings.dryrun:
    log_expected_bytes()


localrules:
    all,


rule all:
    default_target: True
    input:
        final_targets(),
