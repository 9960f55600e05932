# Rules of the merge stage (see workflow/CONTRACTS.md); targets register in STAGE_TARGETS.
# Stage 3: raw per-patch outputs -> slide-scale maps per head, one band of rows at a time.
from histoflow.merge import resources as merge_resources

STAGE_TARGETS["merge"] = ["results/{sample}/merge/maps.zarr"]


rule merge_patches:
    input:
        raw="results/{sample}/infer/raw.zarr",
    output:
        maps=directory("results/{sample}/merge/maps.zarr"),
    log:
        "logs/merge_patches/{sample}.log",
    benchmark:
        "benchmarks/merge_patches/{sample}.tsv"
    conda:
        "../../envs/inference.yaml"
    # Both follow the band size (slide width x patch height x channels) read from
    # raw.zarr's attributes once it exists; a dry run shows a fallback.
    threads: merge_resources.rule_threads(config["merge"])
    resources:
        mem_mb=merge_resources.rule_mem_mb(config["merge"]),
    params:
        options=config["merge"],
    script:
        "../../scripts/merge_patches.py"
