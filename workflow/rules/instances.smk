# Rules of the instances stage (see workflow/CONTRACTS.md); targets register in STAGE_TARGETS.
# Stage 4: slide-scale maps -> objects (one row each), tile by tile with margin de-dup.
from histoflow.instances.resources import estimate_mem_mb

# classmap.zarr exists only for a model card with a semantic task (CONTRACTS.md), so
# it is declared only then.
INSTANCES_CLASSMAP = [sample_path("classmap_zarr")] if card_has_semantic_task() else []

STAGE_TARGETS["instances"] = [
    sample_path("instances_parquet"),
    sample_path("instances_overlay_png"),
    *INSTANCES_CLASSMAP,
]


rule extract_instances:
    input:
        maps=sample_path("maps_zarr"),
        slide=get_slide,
    output:
        **{"classmap": directory(path) for path in INSTANCES_CLASSMAP},
        table=sample_path("instances_parquet"),
        overlay=report(
            sample_path("instances_overlay_png"),
            caption="../report/instances_overlay.rst",
            category="Instances",
            labels={"sample": "{sample}"},
        ),
    log:
        rule_log("extract_instances"),
    benchmark:
        rule_benchmark("extract_instances")
    conda:
        "../../envs/geometry.yaml"
    threads: config["instances"]["workers"]
    resources:
        mem_mb=lambda wildcards, input, threads: estimate_mem_mb(
            input.maps, config["instances"], threads
        ),
    params:
        slide=get_slide_path,
        slide_identity=get_slide_identity,
        options=config["instances"],
    script:
        "../../scripts/extract_instances.py"
