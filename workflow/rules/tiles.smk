# Tile-level models (card kind: tile): one vector per tissue tile, streamed to the
# per-tile stores (HDF5 in the CLAM/TRIDENT layout, Zarr, NPZ) with level-0
# coordinates, tissue ratios, thumbnail, mask and metadata, plus the tile-grid map.
# Plain images and multi-page TIFFs go through the same rule. Engine:
# workflow/histoflow/tiles/; contract: workflow/CONTRACTS.md.

from histoflow.tiles.model import model_files

TILE_STORES = {fmt: sample_path("tile_store", fmt) for fmt in ("hdf5", "zarr", "npz")}
TILE_HEATMAPS = {
    fmt: sample_path("export", f"tiles_{fmt}") for fmt in ("ometiff", "png")
}
TILE_MAP = sample_path("tile_map_zarr")
# Zarr stores are directories; Snakemake must be told.
TILE_STORE_OUTPUTS = [
    directory(TILE_STORES[fmt]) if fmt == "zarr" else TILE_STORES[fmt]
    for fmt in config["tiles"]["formats"]
]

STAGE_TARGETS["tiles"] = (
    [TILE_STORES[fmt] for fmt in config["tiles"]["formats"]]
    + [sample_path("tiles_json")]
    + [TILE_HEATMAPS[fmt] for fmt in config["tiles"]["heatmap"]]
)


rule infer_tiles:
    input:
        slide=get_slide,
        mask=sample_path("mask_png"),
        thumbnail=sample_path("thumbnail_png"),
        meta=sample_path("mask_json"),
        model=model_files(config["tiles"]["model"]),
    output:
        stores=TILE_STORE_OUTPUTS,
        map=directory(TILE_MAP),
        summary=sample_path("tiles_json"),
    log:
        rule_log("infer_tiles"),
    benchmark:
        rule_benchmark("infer_tiles")
    conda:
        "../../envs/tiles.yaml"
    threads: config["tiles"]["num_workers"] + 1
    resources:
        mem_mb=4000,
        gpu=1,
    params:
        slide=get_slide_path,
        slide_identity=get_slide_identity,
        model_identity=files_identity(model_files(config["tiles"]["model"])),
        mpp=get_sample_mpp,
        options=report_safe(config["tiles"]),
        mask_options=config["mask"],
    script:
        "../../scripts/infer_tiles.py"


rule export_tile_ometiff:
    input:
        map=TILE_MAP,
    output:
        TILE_HEATMAPS["ometiff"],
    log:
        rule_log("export_tile_ometiff"),
    benchmark:
        rule_benchmark("export_tile_ometiff")
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
        thumbnail=sample_path("thumbnail_png"),
    output:
        report(
            TILE_HEATMAPS["png"],
            caption="../report/tiles_heatmap.rst",
            category="Tile classifier",
            labels={"sample": "{sample}"},
        ),
    log:
        rule_log("export_tile_png"),
    benchmark:
        rule_benchmark("export_tile_png")
    conda:
        "../../envs/export.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        kind="png",
    script:
        "../../scripts/export_tile_heatmap.py"
