# Rules of the export stage (see workflow/CONTRACTS.md): one rule per format, each
# reading only files of earlier stages; config export.formats picks the ones rule all
# asks for. Engine: workflow/histoflow/export/.

EXPORT_FILES = {
    "geojson": "results/{sample}/export/{sample}.geojson",
    "sqlite": "results/{sample}/export/{sample}.sqlite",
    "tsv": "results/{sample}/export/{sample}.objects.tsv",
    "summary": "results/{sample}/export/{sample}.summary.tsv",
    "zarr": "results/{sample}/export/{sample}.zarr",
    "hdf5": "results/{sample}/export/{sample}.h5",
    "npz": "results/{sample}/export/{sample}.npz",
    "ometiff": "results/{sample}/export/{sample}.ome.tif",
}

STAGE_TARGETS["export"] = [EXPORT_FILES[fmt] for fmt in config["export"]["formats"]]

EXPORT_INSTANCES = "results/{sample}/instances/instances.parquet"
EXPORT_MAPS = "results/{sample}/merge/maps.zarr"

# Stage wall times for the summary: the benchmark files of the stage rules defined
# above this file (so the list follows whichever stages exist).
EXPORT_BENCHMARKS = (
    [
        f"benchmarks/{name}/{{sample}}.tsv"
        for name in (
            "mask_tissue",
            "infer_patches",
            "merge_patches",
            "extract_instances",
        )
        if rules.has(name) and getattr(rules, name).benchmark
    ]
    if config["export"]["summary_timings"]
    else []
)


rule export_geojson:
    input:
        instances=EXPORT_INSTANCES,
    output:
        EXPORT_FILES["geojson"],
    log:
        "logs/export_geojson/{sample}.log",
    conda:
        "../../envs/export.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    script:
        "../../scripts/export_geojson.py"


rule export_sqlite:
    input:
        instances=EXPORT_INSTANCES,
    output:
        EXPORT_FILES["sqlite"],
    log:
        "logs/export_sqlite/{sample}.log",
    conda:
        "../../envs/export.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    script:
        "../../scripts/export_sqlite.py"


rule export_tsv:
    input:
        instances=EXPORT_INSTANCES,
    output:
        EXPORT_FILES["tsv"],
    log:
        "logs/export_tsv/{sample}.log",
    conda:
        "../../envs/export.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    script:
        "../../scripts/export_tsv.py"


rule export_summary:
    input:
        mask="results/{sample}/mask/mask.json",
        raw="results/{sample}/infer/raw.zarr",
        instances=EXPORT_INSTANCES,
        benchmarks=EXPORT_BENCHMARKS,
    output:
        report(
            EXPORT_FILES["summary"],
            caption="../report/export_summary.rst",
            category="Summary",
            labels={"sample": "{sample}"},
        ),
    log:
        "logs/export_summary/{sample}.log",
    conda:
        "../../envs/export.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        timings=config["export"]["summary_timings"],
    script:
        "../../scripts/export_summary.py"


rule export_zarr:
    input:
        maps=EXPORT_MAPS,
    output:
        directory(EXPORT_FILES["zarr"]),
    log:
        "logs/export_zarr/{sample}.log",
    benchmark:
        "benchmarks/export_zarr/{sample}.tsv"
    conda:
        "../../envs/export.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    script:
        "../../scripts/export_zarr.py"


rule export_hdf5:
    input:
        maps=EXPORT_MAPS,
    output:
        EXPORT_FILES["hdf5"],
    log:
        "logs/export_hdf5/{sample}.log",
    benchmark:
        "benchmarks/export_hdf5/{sample}.tsv"
    conda:
        "../../envs/export.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    script:
        "../../scripts/export_hdf5.py"


rule export_npz:
    input:
        maps=EXPORT_MAPS,
    output:
        EXPORT_FILES["npz"],
    log:
        "logs/export_npz/{sample}.log",
    conda:
        "../../envs/export.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        max_mb=config["export"]["npz_max_mb"],
    script:
        "../../scripts/export_npz.py"


rule export_ometiff:
    input:
        maps=EXPORT_MAPS,
    output:
        EXPORT_FILES["ometiff"],
    log:
        "logs/export_ometiff/{sample}.log",
    benchmark:
        "benchmarks/export_ometiff/{sample}.tsv"
    conda:
        "../../envs/export.yaml"
    threads: 2
    resources:
        mem_mb=4000,
    params:
        options=config["export"]["heatmap"],
    script:
        "../../scripts/export_ometiff.py"
