# Stage 2: batched patch inference on the GPU (or CPU); raw per-patch outputs to Zarr.
from histoflow.inference import threads as infer_threads

STAGE_TARGETS["infer"] = store_targets("raw", sample_path("raw_zarr"))


rule infer_patches:
    input:
        slide=get_slide,
        mask=sample_path("mask_png"),
        mask_meta=sample_path("mask_json"),
        thumbnail=sample_path("thumbnail_png"),
        model=get_model_files,
        stain_target=get_stain_target,
    output:
        raw=store_output("raw", sample_path("raw_zarr")),
    log:
        rule_log("infer_patches"),
    benchmark:
        rule_benchmark("infer_patches")
    conda:
        "../../envs/inference.yaml"
    # The job's cores: torch's intra-op threads; loader workers are inference.num_workers.
    threads: infer_threads.rule_threads(config["inference"], workflow)
    resources:
        gpu=1,
        mem_mb=4000,
    params:
        slide=get_slide_path,
        slide_identity=get_slide_identity,
        model_identity=get_model_identity,
        mpp=get_sample_mpp,
        card=report_safe(config["model"]["card"]),
        weights=report_safe(config["model"]["weights"]),
        options=report_safe(config["inference"]),
    script:
        "../../scripts/infer_patches.py"
