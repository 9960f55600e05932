# Stage 1: tissue mask, thumbnail and QC overlay for each slide.


STAGE_TARGETS["mask"] = [
    sample_path("mask_json"),
    sample_path("mask_overlay_png"),
]


rule mask_tissue:
    input:
        slide=get_slide,
        user_mask=get_user_mask,
    output:
        mask=sample_path("mask_png"),
        thumbnail=sample_path("thumbnail_png"),
        overlay=report(
            sample_path("mask_overlay_png"),
            caption="../report/mask_overlay.rst",
            category="Tissue mask",
            labels={"sample": "{sample}"},
        ),
        meta=sample_path("mask_json"),
    log:
        rule_log("mask_tissue"),
    benchmark:
        rule_benchmark("mask_tissue")
    conda:
        "../../envs/geometry.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        slide=get_slide_path,
        user_mask=get_user_mask_path,
        slide_identity=get_slide_identity,
        user_mask_identity=get_user_mask_identity,
        mpp=get_sample_mpp,
        options=config["mask"],
    script:
        "../../scripts/mask_tissue.py"
