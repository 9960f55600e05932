# Rules of the merge stage (see workflow/CONTRACTS.md); targets register in STAGE_TARGETS.
# Stage 3: raw per-patch outputs -> slide-scale maps per head, one band of rows at a time.
from histoflow.merge import resources as merge_resources


STAGE_TARGETS["merge"] = ["results/{sample}/merge/maps.zarr"]


def merge_band_rows():
    return config["merge"].get("band_rows")


# Both read raw.zarr's attributes; Snakemake re-evaluates them once infer_patches has
# written it (before that, e.g. in a dry run, they report a fallback).
def merge_threads(wildcards, input):
    attrs = merge_resources.raw_attrs(input.raw)
    return merge_resources.merge_threads(attrs, merge_band_rows())


def merge_mem_mb(wildcards, input, attempt):
    attrs = merge_resources.raw_attrs(input.raw)
    return merge_resources.merge_mem_mb(attrs, merge_band_rows()) * attempt


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
    threads: merge_threads
    resources:
        mem_mb=merge_mem_mb,
    params:
        options=config["merge"],
    script:
        "../../scripts/merge_patches.py"
