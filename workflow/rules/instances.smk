# Rules of the instances stage (see workflow/CONTRACTS.md); targets register in STAGE_TARGETS.
# Stage 4: slide-scale maps -> objects (one row each), tile by tile with margin de-dup.
from histoflow.instances.resources import estimate_mem_mb

STAGE_TARGETS["instances"] = [
    "results/{sample}/instances/instances.parquet",
    "results/{sample}/instances/overlay.png",
]


rule extract_instances:
    input:
        maps="results/{sample}/merge/maps.zarr",
        slide=get_slide,
    output:
        table="results/{sample}/instances/instances.parquet",
        overlay=report(
            "results/{sample}/instances/overlay.png",
            caption="../report/instances_overlay.rst",
            category="Instances",
            labels={"sample": "{sample}"},
        ),
    log:
        "logs/extract_instances/{sample}.log",
    benchmark:
        "benchmarks/extract_instances/{sample}.tsv"
    conda:
        "../../envs/geometry.yaml"
    threads: config["instances"]["workers"]
    resources:
        mem_mb=lambda wildcards, input, threads: estimate_mem_mb(
            input.maps, config["instances"], threads
        ),
    params:
        slide=get_slide_path,
        options=config["instances"],
    script:
        "../../scripts/extract_instances.py"
