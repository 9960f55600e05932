# Rules of the cells stage (see workflow/CONTRACTS.md); targets register in STAGE_TARGETS.
# Stage 5: nuclei of the instance table -> measurements, neighbourhood graph, AnnData.
from histoflow.cells.resources import estimate_mem_mb as cells_mem_mb

STAGE_TARGETS["cells"] = [
    sample_path("cells_parquet"),
    sample_path("cells_graph_parquet"),
    sample_path("cells_h5ad"),
]


rule measure_cells:
    input:
        table=sample_path("instances_parquet"),
        slide=get_slide,
    output:
        cells=sample_path("cells_parquet"),
        graph=sample_path("cells_graph_parquet"),
    log:
        rule_log("measure_cells"),
    benchmark:
        rule_benchmark("measure_cells")
    conda:
        "../../envs/geometry.yaml"
    threads: config["cells"]["workers"]
    resources:
        mem_mb=lambda wildcards, input, threads: cells_mem_mb(
            input.table, config["cells"], threads
        ),
    params:
        slide=get_slide_path,
        slide_identity=get_slide_identity,
        options=config["cells"],
    script:
        "../../scripts/measure_cells.py"


rule cells_anndata:
    input:
        cells=sample_path("cells_parquet"),
        graph=sample_path("cells_graph_parquet"),
        mask=sample_path("mask_json"),
    output:
        sample_path("cells_h5ad"),
    log:
        rule_log("cells_anndata"),
    benchmark:
        rule_benchmark("cells_anndata")
    conda:
        "../../envs/geometry.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    script:
        "../../scripts/cells_anndata.py"
