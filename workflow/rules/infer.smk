# Stage 2: batched patch inference on the GPU (or CPU); raw per-patch outputs to Zarr.


STAGE_TARGETS["infer"] = ["results/{sample}/infer/raw.zarr"]


rule infer_patches:
    input:
        slide=get_slide,
        mask="results/{sample}/mask/mask.png",
        mask_meta="results/{sample}/mask/mask.json",
        model=get_model_files,
    output:
        raw=directory("results/{sample}/infer/raw.zarr"),
    log:
        "logs/infer_patches/{sample}.log",
    benchmark:
        "benchmarks/infer_patches/{sample}.tsv"
    conda:
        "../../envs/inference.yaml"
    threads: max(1, config["inference"]["num_workers"])
    resources:
        gpu=1,
        mem_mb=4000,
    params:
        slide=get_slide_path,
        mpp=get_sample_mpp,
        card=config["model"]["card"],
        options=config["inference"],
    script:
        "../../scripts/infer_patches.py"
