# Rules of the merge stage (see workflow/CONTRACTS.md); targets register in STAGE_TARGETS.
# Stage 3: raw per-patch outputs -> slide-scale maps per head, one band of rows at a time.
from histoflow.merge import resources as merge_resources

STAGE_TARGETS["merge"] = store_targets("maps", sample_path("maps_zarr"))


rule merge_patches:
    input:
        raw=sample_path("raw_zarr"),
    output:
        maps=store_output("maps", sample_path("maps_zarr")),
    log:
        rule_log("merge_patches"),
    benchmark:
        rule_benchmark("merge_patches")
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


STAGE_TARGETS["merge"].append(sample_path("heatmap_png"))


rule render_heatmap:
    input:
        maps=sample_path("maps_zarr"),
        slide=get_slide,
    output:
        report(
            sample_path("heatmap_png"),
            caption="../report/merge_heatmap.rst",
            category="Heatmaps",
            labels={"sample": "{sample}"},
        ),
    log:
        rule_log("render_heatmap"),
    benchmark:
        rule_benchmark("render_heatmap")
    conda:
        "../../envs/inference.yaml"
    threads: 1
    resources:
        mem_mb=1500,
    params:
        slide=get_slide_path,
        slide_identity=get_slide_identity,
        mpp=get_sample_mpp,
    script:
        "../../scripts/render_heatmap.py"
