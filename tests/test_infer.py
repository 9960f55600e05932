"""Patch inference: grid, determinism across loaders, TorchScript through the rule, the
built-in model on generated nuclei and on the demo cohort, and model/card error cases."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zarr
from conftest import DEMO_SAMPLE, REPO, run_workflow
from histoflow.errors import ConfigError, ModelError
from histoflow.inference.grid import box_tissue_fraction, make_grid
from histoflow.inference.runner import InferenceOptions, run
from histoflow.io.mask_files import read_mask
from histoflow.models.card import load_card
from histoflow.models.loader import load_model
from histoflow.synthetic.slides import make_nuclei_slide
from scipy import ndimage
from scipy.stats import mannwhitneyu


@pytest.fixture(scope="module")
def nuclei_tiff(tmp_path_factory):
    """A 768 x 640 px pyramidal TIFF at 0.5 µm/px (mpp from its resolution tags), with a
    glass band on the left, ~270 nuclei and 4 touching pairs; plus its ground truth."""
    path = tmp_path_factory.mktemp("nuclei") / "nuclei.tif"
    truth = make_nuclei_slide(path, width=768, height=640, mpp=0.5, seed=0)
    return path, truth


@pytest.mark.parametrize("shape, stride", [((1000, 700), None), ((257, 256), (200, 128))])
def test_grid_covers_slide(shape, stride):
    g = make_grid(shape, (288, 288), (256, 256), stride)
    covered = np.zeros(shape, bool)
    for x0, y0, x1, y1 in g.boxes:
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    # Row-major, starting at the origin, last row/column the first to reach the edge.
    assert (g.boxes[0, :2] == 0).all()
    assert np.array_equal(np.lexsort((g.boxes[:, 0], g.boxes[:, 1])), np.arange(len(g.boxes)))
    assert g.boxes[:, 2].max() >= shape[1] and g.boxes[:, 2].max() - g.stride[1] < shape[1]
    assert (g.input_boxes()[:, :2] == g.boxes[:, :2] - 16).all()


def test_grid_respects_mask():
    mask = np.zeros((100, 80), bool)  # mask pixel = 4 model pixels
    mask[10:40, 20:60] = True
    g_all = make_grid((400, 320), (64, 64), (64, 64))
    g = make_grid(
        (400, 320), (64, 64), (64, 64), mask=mask, scale_to_mask=(0.25, 0.25), min_tissue=0.5
    )
    # Oracle: the mask at model resolution (each mask pixel 4 x 4 model pixels), so the
    # tissue fraction of a box is the mean of its pixels, outside the slide glass.
    full = np.zeros((448, 384), bool)
    full[:400, :320] = np.kron(mask, np.ones((4, 4), bool))
    frac = np.array([full[y0:y1, x0:x1].mean() for x0, y0, x1, y1 in g_all.boxes])
    assert np.allclose(box_tissue_fraction(g_all.boxes, mask, (0.25, 0.25)), frac, atol=1e-6)
    assert len(g.boxes) == (frac >= 0.5).sum() > 0
    kept = {tuple(b) for b in g.boxes}
    for box, f in zip(g_all.boxes, frac):
        assert (tuple(box) in kept) == (f >= 0.5)


@pytest.mark.parametrize("stride", [(0, 10), (300, 300)])
def test_bad_stride_names_field(stride):
    with pytest.raises(ConfigError, match=r"config field 'inference.stride'"):
        make_grid((500, 500), (256, 256), (256, 256), stride)


def _read_raw(path):
    g = zarr.open_group(str(path), mode="r")
    return {k: g["heads"][k][:] for k in g["heads"].array_keys()}, g["boxes"][:], dict(g.attrs)


def _store_bytes(path):
    return {
        str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()
    }


def test_outputs_identical_across_workers_and_batch_sizes(tmp_path, nuclei_tiff):
    path, truth = nuclei_tiff
    card = load_card("builtin:hed_nuclei")
    model = load_model(card)
    # Tissue mask at 4 level-0 px per mask px; the first grid column is 55 % glass.
    mask, meta = truth.tissue[::4, ::4], {"mask_scale": [4.0, 4.0]}
    stores = []
    for workers, batch in [(0, 16), (2, 3)]:
        out = tmp_path / f"raw-{workers}-{batch}.zarr"
        opts = InferenceOptions.from_config(
            dict(
                batch_size=batch,
                num_workers=workers,
                chunk_patches=5,
                stride=(128, 128),
                min_tissue_fraction=0.6,
            )
        )
        run(str(path), card, model, str(out), opts, sample="gen", mask=mask, mask_meta=meta)
        stores.append(out)
    a, b = (_store_bytes(p) for p in stores)
    # Same inputs, different loading: the same files with the same bytes.
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    heads, boxes, attrs = _read_raw(stores[0])
    assert attrs["grid_shape"] == [4, 5] and len(boxes) == attrs["written"] == 16
    assert (boxes[:, 0] > 0).all()  # the glass column is masked out
    assert attrs["scale"] == 1.0 and attrs["slide_mpp"] == 0.5  # mpp from the TIFF tags
    assert heads["nucleus"].dtype == np.float16 and heads["nucleus"].shape == (16, 256, 256, 1)
    assert heads["nucleus"].min() >= 0 and heads["nucleus"].max() <= 1  # sigmoid applied


class TinyNet(torch.nn.Module):
    """Two heads, valid convolution (output smaller than input), deterministic weights."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 5)  # 68 -> 64
        self.cls = torch.nn.Conv2d(4, 3, 1)

    def forward(self, x):
        f = torch.relu(self.conv(x))
        return {"tissue": self.cls(f), "density": f[:, :1]}


def write_tiny_card(tmp_path, source: dict) -> str:
    card = {
        "name": "tiny",
        "kind": "dense",
        "mpp": 1.0,
        "patch_input": [68, 68],
        "patch_output": [64, 64],
        "input": {"scale": 255, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "heads": [
            {"name": "tissue", "channels": 3, "activation": "softmax"},
            {"name": "density", "channels": 1, "activation": "none"},
        ],
        "source": source,
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(card))
    return str(path)


@pytest.mark.e2e
def test_torchscript_through_rule_equals_direct_call(tmp_path, demo_slide):
    net = TinyNet().eval()
    torch.jit.script(net).save(str(tmp_path / "tiny.pt"))
    card_path = write_tiny_card(tmp_path, {"torchscript": "tiny.pt"})
    run_workflow(
        tmp_path / "run",
        samples=[{"sample": "cmu", "path": demo_slide}],
        config={
            "stages": ["infer"],
            "model": {"card": card_path},
            "inference": {"dtype": "float32", "batch_size": 7, "min_tissue_fraction": 0.3},
        },
    )
    raw = tmp_path / "run" / "results" / "cmu" / "infer" / "raw.zarr"
    heads, boxes, attrs = _read_raw(raw)
    assert attrs["weights_sha256"] and attrs["model"]["name"] == "tiny"
    # Direct call on the same patches, read with the same reader (cut from runs of
    # neighbouring patches, as the stage reads them).
    from histoflow.inference import core

    regions = np.column_stack(
        [np.zeros(len(boxes), np.int64), boxes[:, :2] - 2, np.full((len(boxes), 2), 68)]
    )
    reader = core.SlideRegions(
        core.slide_opener(demo_slide, None, None), regions, 1.0, core.plan_runs(regions)
    )
    pick = np.linspace(0, len(boxes) - 1, 6).astype(int)
    patches = [reader[int(i)] for i in pick]
    x = torch.from_numpy(np.stack(patches).transpose(0, 3, 1, 2)).float() / 255
    with torch.no_grad():
        ref = net((x - 0.5) / 0.25)
    tissue = torch.softmax(ref["tissue"], 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(heads["tissue"][pick], tissue, atol=1e-5)
    np.testing.assert_allclose(
        heads["density"][pick], ref["density"].permute(0, 2, 3, 1), atol=1e-5
    )


def test_default_model_finds_generated_nuclei(tmp_path, nuclei_tiff):
    path, truth = nuclei_tiff
    card = load_card("builtin:hed_nuclei")
    out = tmp_path / "raw.zarr"
    opts = InferenceOptions.from_config({"dtype": "float32"})
    run(str(path), card, load_model(card), str(out), opts)
    heads, boxes, _ = _read_raw(out)
    prob = np.zeros(truth.labels.shape, np.float32)
    energy = np.zeros_like(prob)
    for (x0, y0, x1, y1), p, e in zip(boxes, heads["nucleus"], heads["energy"]):
        ph, pw = prob[y0:y1, x0:x1].shape
        prob[y0:y1, x0:x1] = p[:ph, :pw, 0]
        energy[y0:y1, x0:x1] = e[:ph, :pw, 0]
    inside, outside = prob[truth.nuclei], prob[~truth.nuclei]
    # Pixel-level ROC AUC (Mann-Whitney U / n1 n2): threshold-free separation of nuclei
    # from stroma and glass; 0.95 leaves room only for blurred rims at ellipse edges.
    auc = mannwhitneyu(inside, outside).statistic / (inside.size * outside.size)
    assert auc >= 0.95
    # And at the card's own threshold (0.5): nuclei mostly above, background below.
    assert np.median(inside) > 0.9 and np.median(outside) < 0.1
    assert (outside > 0.5).mean() < 0.01
    # Energy: one local maximum (5 px = 2.5 µm window, under the smallest radius) per
    # nucleus, so watershed markers split the touching pairs.
    peaks = (energy == ndimage.maximum_filter(energy, 5)) & (prob > 0.5)
    per_nucleus = ndimage.sum(peaks, truth.labels, np.arange(1, truth.labels.max() + 1))
    assert (per_nucleus == 1).mean() >= 0.95
    assert truth.touching and all(
        per_nucleus[a - 1] == per_nucleus[b - 1] == 1 for a, b in truth.touching
    )
    assert (peaks & ~truth.nuclei).sum() <= 0.02 * len(per_nucleus)


@pytest.mark.e2e
def test_demo_cohort_raw_store(demo_run):
    """The demo slide through the default config: raw.zarr per the contract, patches
    where the tissue mask says, nuclei found on real H&E, progress and benchmark files."""
    res = demo_run / "results" / DEMO_SAMPLE
    g = zarr.open_group(str(res / "infer" / "raw.zarr"), mode="r")
    attrs = dict(g.attrs)
    contract = {"sample", "model", "weights_sha256", "mpp", "slide_mpp", "scale"}
    contract |= {"slide_dimensions", "shape", "patch_input", "patch_output", "stride"}
    contract |= {"grid_shape", "heads", "versions"}
    assert contract <= attrs.keys()
    assert attrs["model"]["name"] == "hed_nuclei" and attrs["weights_sha256"] is None
    assert attrs["sample"] == DEMO_SAMPLE and attrs["slide_dimensions"] == [2220, 2967]
    assert attrs["scale"] == pytest.approx(0.5 / 0.499)
    assert attrs["shape"] == [math.ceil(2967 / attrs["scale"]), math.ceil(2220 / attrs["scale"])]
    boxes, grid = g["boxes"][:], g["grid"][:]
    sy, sx = attrs["stride"]
    assert np.array_equal(boxes[:, :2], grid[:, ::-1] * [sx, sy])
    assert np.array_equal(np.lexsort((grid[:, 1], grid[:, 0])), np.arange(len(grid)))
    # Exactly the grid boxes with enough tissue in the stage's mask were computed.
    mask, meta = read_mask(res / "mask" / "mask.png", res / "mask" / "mask.json")
    full = make_grid(attrs["shape"], attrs["patch_input"], attrs["patch_output"], (sy, sx))
    s = attrs["scale"]
    frac = box_tissue_fraction(
        full.boxes, mask, (s / meta["mask_scale"][0], s / meta["mask_scale"][1])
    )
    assert np.array_equal(full.boxes[frac >= max(attrs["min_tissue_fraction"], 1e-12)], boxes)
    assert 0 < len(boxes) < len(full.boxes)
    nucleus = g["heads"]["nucleus"][:]
    assert nucleus.shape == (len(boxes), 256, 256, 1) and nucleus.dtype == np.float16
    # Real H&E: some but not most of the tissue is nuclei.
    assert 0.02 < (nucleus > 0.5).mean() < 0.5
    log = (demo_run / "logs" / "infer_patches" / f"{DEMO_SAMPLE}.log").read_text()
    assert "patch/s" in log and "patches/s" in log
    assert (demo_run / "benchmarks" / "infer_patches" / f"{DEMO_SAMPLE}.tsv").is_file()


def test_unknown_model_is_named():
    with pytest.raises(
        ModelError, match=r"config field 'model.card': unknown built-in model 'nope'"
    ):
        load_card("builtin:nope")
    with pytest.raises(
        ModelError, match=r"config field 'model.card': model card 'x.yaml' not found"
    ):
        load_card("x.yaml")


def test_tile_card_refused_for_dense_inference():
    from histoflow.models.card import load_dense_card

    with pytest.raises(ModelError, match="kind 'tile'; tile-level models run in the 'tiles'"):
        load_dense_card(str(REPO / "workflow/histoflow/tiles/cards/stain_stats.yaml"))


def test_card_with_wrong_output_shape(tmp_path):
    torch.jit.script(TinyNet().eval()).save(str(tmp_path / "tiny.pt"))
    path = write_tiny_card(tmp_path, {"torchscript": "tiny.pt"})
    card = yaml.safe_load(Path(path).read_text())
    card["patch_output"] = [66, 66]
    Path(path).write_text(yaml.safe_dump(card))
    with pytest.raises(ModelError, match=r"head 'tissue' gives shape \(1, 3, 64, 64\), but card"):
        load_model(load_card(path))


def test_card_schema_error_names_field(tmp_path):
    path = write_tiny_card(tmp_path, {"builtin": "hed_nuclei"})
    card = yaml.safe_load(Path(path).read_text())
    card["heads"][0]["activation"] = "relu"
    Path(path).write_text(yaml.safe_dump(card))
    with pytest.raises(ModelError, match=r"field 'heads.0.activation'"):
        load_card(path)


TINY_MODULE = """
import torch


class TinyNet(torch.nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, width, 5)
        self.cls = torch.nn.Conv2d(width, 3, 1)

    def forward(self, x):
        f = torch.relu(self.conv(x))
        return {"tissue": self.cls(f), "density": f[:, :1]}


def make(width=4):
    return TinyNet(width)
"""


def test_entrypoint_next_to_card_with_weights_only(tmp_path):
    (tmp_path / "tinymod.py").write_text(TINY_MODULE)
    torch.save(TinyNet().state_dict(), tmp_path / "w.pt")
    source = {"entrypoint": "tinymod:make", "weights": "w.pt", "kwargs": {"width": 4}}
    card = load_card(write_tiny_card(tmp_path, source))
    model = load_model(card)  # imported from the card's folder, not from sys.path
    assert torch.equal(model.conv.weight, TinyNet().conv.weight)
    assert card.weights_sha256()
    # A pickled module (not a state dict of tensors) needs arbitrary unpickling: refused.
    torch.save(TinyNet(), tmp_path / "w.pt")
    with pytest.raises(ModelError, match="needs arbitrary unpickling"):
        load_model(load_card(str(tmp_path / "tiny.yaml")))
    (tmp_path / "w.pt").write_bytes(b"garbage")
    with pytest.raises(ModelError, match=r"weights file '.*w.pt'"):
        load_model(load_card(str(tmp_path / "tiny.yaml")))
    torch.save(TinyNet().state_dict(), tmp_path / "w.pt")
    source["kwargs"] = {"width": 8}  # weights no longer fit the model
    with pytest.raises(ModelError, match=r"weights file '.*w.pt' does not fit 'tinymod:make'"):
        load_model(load_card(write_tiny_card(tmp_path, source)))
    source["entrypoint"] = "tinymod:missing"
    with pytest.raises(ModelError, match=r"field 'source.entrypoint': cannot import"):
        load_model(load_card(write_tiny_card(tmp_path, source)))


def test_misspelt_card_key_is_refused(tmp_path):
    path = write_tiny_card(tmp_path, {"builtin": "hed_nuclei"})
    card = yaml.safe_load(Path(path).read_text())
    card["postproces"] = []
    Path(path).write_text(yaml.safe_dump(card))
    with pytest.raises(ModelError, match=r"model card .*tiny.yaml.*postproces"):
        load_card(path)


def test_dense_and_tile_grids_share_one_tissue_fraction():
    # Box edges inside mask pixels (10 px tiles over 4 px mask pixels): the case where a
    # per-mask-pixel count and the exact area disagree. Both stages use the exact area.
    from histoflow.tiles.grid import TileGrid

    rng = np.random.default_rng(3)
    mask = rng.random((11, 15)) > 0.4
    grid = TileGrid(dimensions=(60, 44), slide_mpp=0.5, mpp=0.5, tile_size=10, stride=10)
    tiles = grid.tissue_ratio(mask, (4.0, 4.0))
    xy = grid.origins()
    boxes = np.concatenate([xy, xy + 10], axis=1)
    dense = box_tissue_fraction(boxes, mask, (0.25, 0.25))
    np.testing.assert_allclose(dense, tiles, atol=1e-6)
    assert len(np.unique(np.round(dense, 3))) > 3  # fractional, not all 0 or 1
