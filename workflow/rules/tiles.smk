# Tile-level models (card kind: tile): one vector per tissue tile, streamed to the
# per-tile stores (HDF5 in the CLAM/TRIDENT layout, Zarr, NPZ) with level-0
# coordinates, tissue ratios, thumbnail, mask and metadata, plus the tile-grid map.
# Plain images and multi-page TIFFs go through the same rule. Engine:
# workflow/histoflow/tiles/; contract: workflow/CONTRACTS.md.

from histoflow.tiles.model import model_files

TILE_STORES = {
    "hdf5": "results/{sample}/tiles/{sample}.h5",
    "zarr": "results/{sample}/tiles/{sample}.zarr",
    "npz": "results/{sample}/tiles/{sample}.npz",
}
TILE_HEATMAPS = {
    "ometiff": "results/{sample}/export/{sample}.tiles.ome.tif",
    "png": "results/{sample}/export/{sample}.tiles.png",
}
TILE_MAP = "results/{sample}/tiles/map.zarr"
# Zarr stores are directories; Snakemake must be told.
TILE_STORE_OUTPUTS = [
    directory(TILE_STORES[fmt]) if fmt == "zarr" else TILE_STORES[fmt]
    for fmt in config["tiles"]["formats"]
]

STAGE_TARGETS["tiles"] = (
    [TILE_STORES[fmt] for fmt in config["tiles"]["formats"]]
    + ["results/{sample}/tiles/tiles.json"]
    + [TILE_HEATMAPS[fmt] for fmt in config["tiles"]["heatmap"]]
)


rule infer_tiles:
    input:
        slide=get_slide,
        mask="results/{sample}/mask/mask.png",
        thumbnail="results/{sample}/mask/thumbnail.png",
        meta="results/{sample}/mask/mask.json",
        model=model_files(config["tiles"]["model"]),
    output:
        stores=TILE_STORE_OUTPUTS,
        map=directory(TILE_MAP),
        summary="results/{sample}/tiles/tiles.json",
    log:
        "logs/infer_tiles/{sample}.log",
    benchmark:
        "benchmarks/infer_tiles/{sample}.tsv"
    conda:
        "../../envs/tiles.yaml"
    threads: config["tiles"]["num_workers"] + 1
    resources:
        mem_mb=4000,
        gpu=1,
    params:
        slide=get_slide_path,
        mpp=get_sample_mpp,
        options=config["tiles"],
        mask_options=config["mask"],
    script:
        "../../scripts/infer_tiles.py"


rule export_tile_ometiff:
    input:
        map=TILE_MAP,
    output:
        TILE_HEATMAPS["ometiff"],
    log:
        "logs/export_tile_ometiff/{sample}.log",
    conda:
        "../../envs/export.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        kind="ometiff",
    script:
        "../../scripts/export_tile_heatmap.py"


rule export_tile_png:
    input:
        map=TILE_MAP,
        thumbnail="results/{sample}/mask/thumbnail.png",
    output:
        report(
            TILE_HEATMAPS["png"],
            caption="../report/tiles_heatmap.rst",
            category="Tile classifier",
            labels={"sample": "{sample}"},
        ),
    log:
        "logs/export_tile_png/{sample}.log",
    conda:
        "../../envs/export.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        kind="png",
    script:
        "../../scripts/export_tile_heatmap.py"
