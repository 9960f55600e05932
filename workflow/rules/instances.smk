# Rules of the instances stage (see workflow/CONTRACTS.md); targets register in STAGE_TARGETS.
# Stage 4: slide-scale maps -> objects (one row each), tile by tile with margin de-dup.


STAGE_TARGETS["instances"] = [
    "results/{sample}/instances/instances.parquet",
    "results/{sample}/instances/overlay.png",
]

# Memory: the main process holds two strips of tile windows, each worker one window
# and its intermediates; about 60 bytes per window pixel each (benchmarks/bench_instances.py).
INSTANCES_WINDOW_MB = (
    (config["instances"]["tile_shape"][0] + 2 * config["instances"]["margin"])
    * (config["instances"]["tile_shape"][1] + 2 * config["instances"]["margin"])
    * 60
    / 1e6
)


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
        mem_mb=lambda wildcards, threads: int(
            1000 + INSTANCES_WINDOW_MB * (threads + 2)
        ),
    params:
        slide=get_slide_path,
        options=config["instances"],
    script:
        "../../scripts/extract_instances.py"
