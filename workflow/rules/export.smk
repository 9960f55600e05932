# Rules of the export stage (see workflow/CONTRACTS.md): one rule per format, each
# reading only files of earlier stages; config export.formats picks the ones rule all
# asks for. Engine: workflow/histoflow/export/.

EXPORT_FILES = {
    fmt: sample_path("export", fmt)
    for fmt in ("sqlite", "tsv", "summary", "zarr", "hdf5", "npz", "ometiff")
}
# GeoJSON exports: .geojson.gz with export.geojson_gzip.
EXPORT_GZIP = config["export"]["geojson_gzip"]
for _fmt in ("geojson", "cells"):
    EXPORT_FILES[_fmt] = sample_path("geojson", _fmt, EXPORT_GZIP)

STAGE_TARGETS["export"] = [EXPORT_FILES[fmt] for fmt in config["export"]["formats"]]

EXPORT_INSTANCES = sample_path("instances_parquet")
EXPORT_MAPS = sample_path("maps_zarr")

# Stage wall times for the summary: the benchmark files of the stage rules defined
# above this file (so the list follows whichever stages exist).
EXPORT_BENCHMARKS = (
    [
        rule_benchmark(name)
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
        rule_log("export_geojson"),
    benchmark:
        rule_benchmark("export_geojson")
    conda:
        "../../envs/export.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        gzip=EXPORT_GZIP,
    script:
        "../../scripts/export_geojson.py"


rule export_cells:
    input:
        cells=sample_path("cells_parquet"),
        instances=EXPORT_INSTANCES,
    output:
        EXPORT_FILES["cells"],
    log:
        rule_log("export_cells"),
    benchmark:
        rule_benchmark("export_cells")
    conda:
        "../../envs/export.yaml"
    threads: 1
    resources:
        mem_mb=1500,
    params:
        expansion_um=config["export"]["cell_expansion_um"],
        gzip=EXPORT_GZIP,
    script:
        "../../scripts/export_cells.py"


rule export_sqlite:
    input:
        instances=EXPORT_INSTANCES,
    output:
        EXPORT_FILES["sqlite"],
    log:
        rule_log("export_sqlite"),
    benchmark:
        rule_benchmark("export_sqlite")
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
        rule_log("export_tsv"),
    benchmark:
        rule_benchmark("export_tsv")
    conda:
        "../../envs/export.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    script:
        "../../scripts/export_tsv.py"


rule export_summary:
    input:
        mask=sample_path("mask_json"),
        maps=sample_path("maps_zarr"),
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
        rule_log("export_summary"),
    benchmark:
        rule_benchmark("export_summary")
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
        rule_log("export_zarr"),
    benchmark:
        rule_benchmark("export_zarr")
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
        rule_log("export_hdf5"),
    benchmark:
        rule_benchmark("export_hdf5")
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
        rule_log("export_npz"),
    benchmark:
        rule_benchmark("export_npz")
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
        rule_log("export_ometiff"),
    benchmark:
        rule_benchmark("export_ometiff")
    conda:
        "../../envs/export.yaml"
    threads: 2
    resources:
        mem_mb=4000,
    params:
        options=config["export"]["heatmap"],
    script:
        "../../scripts/export_ometiff.py"
