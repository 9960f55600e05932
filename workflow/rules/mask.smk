# Stage 1: tissue mask, thumbnail and QC overlay for each slide.


STAGE_TARGETS["mask"] = [
    "results/{sample}/mask/mask.json",
    "results/{sample}/mask/overlay.png",
]


rule mask_tissue:
    input:
        slide=get_slide,
        user_mask=get_user_mask,
    output:
        mask="results/{sample}/mask/mask.png",
        thumbnail="results/{sample}/mask/thumbnail.png",
        overlay=report(
            "results/{sample}/mask/overlay.png",
            caption="../report/mask_overlay.rst",
            category="Tissue mask",
            labels={"sample": "{sample}"},
        ),
        meta="results/{sample}/mask/mask.json",
    log:
        "logs/mask_tissue/{sample}.log",
    benchmark:
        "benchmarks/mask_tissue/{sample}.tsv"
    conda:
        "../../envs/geometry.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        slide=get_slide_path,
        user_mask=get_user_mask_path,
        mpp=get_sample_mpp,
        options=config["mask"],
    script:
        "../../scripts/mask_tissue.py"
