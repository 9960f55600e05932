"""Patch inference: grid, determinism across loaders, TorchScript through the rule, the
built-in model on generated nuclei, and model/card error cases."""

import numpy as np
import pytest
import torch
import yaml
import zarr
from conftest import REPO, run_workflow
from histoflow.errors import ConfigError, ModelError
from histoflow.inference.grid import make_grid, tissue_fraction
from histoflow.inference.runner import InferenceOptions, run_inference
from histoflow.models.card import load_card
from histoflow.models.loader import load_model
from PIL import Image
from scipy.stats import mannwhitneyu


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
    frac = tissue_fraction(g_all.boxes, mask, (0.25, 0.25))
    assert len(g.boxes) == (frac >= 0.5).sum() > 0
    kept = {tuple(b) for b in g.boxes}
    for box, f in zip(g_all.boxes, frac):
        assert (tuple(box) in kept) == (f >= 0.5)


@pytest.mark.parametrize("stride", [(0, 10), (300, 300)])
def test_bad_stride_names_field(stride):
    with pytest.raises(ConfigError, match="config field 'inference.stride'"):
        make_grid((500, 500), (256, 256), (256, 256), stride)


def _read_raw(path):
    g = zarr.open_group(str(path), mode="r")
    return {k: g["heads"][k][:] for k in g["heads"].array_keys()}, g["boxes"][:], dict(g.attrs)


def test_outputs_identical_across_workers_and_batch_sizes(tmp_path, demo_slide):
    card = load_card("builtin:hed_nuclei")
    model = load_model(card)
    runs = []
    for workers, batch in [(0, 16), (2, 3)]:
        out = tmp_path / f"raw-{workers}-{batch}.zarr"
        opts = InferenceOptions(
            batch_size=batch,
            num_workers=workers,
            chunk_patches=5,
            stride=(192, 192),
            dtype="float32",
        )
        run_inference(str(demo_slide), card, model, str(out), opts, sample="cmu")
        runs.append(_read_raw(out))
    (a, boxes_a, attrs_a), (b, boxes_b, _) = runs
    assert np.array_equal(boxes_a, boxes_b) and len(boxes_a) == attrs_a["written"]
    for head in a:
        assert np.array_equal(a[head], b[head])
    assert attrs_a["scale"] == pytest.approx(0.5 / 0.499)
    assert a["nucleus"].min() >= 0 and a["nucleus"].max() <= 1  # sigmoid applied


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
    # Direct call on the same patches, read with the same reader.
    from histoflow.slide import open_slide

    pick = np.linspace(0, len(boxes) - 1, 6).astype(int)
    with open_slide(demo_slide) as s:
        patches = [s.read_region(x0 - 2, y0 - 2, 68, 68, 1.0) for x0, y0, _, _ in boxes[pick]]
    x = torch.from_numpy(np.stack(patches).transpose(0, 3, 1, 2)).float() / 255
    with torch.no_grad():
        ref = net((x - 0.5) / 0.25)
    tissue = torch.softmax(ref["tissue"], 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(heads["tissue"][pick], tissue, atol=1e-5)
    np.testing.assert_allclose(
        heads["density"][pick], ref["density"].permute(0, 2, 3, 1), atol=1e-5
    )


def nuclei_slide(tmp_path, seed=0):
    """Pink stroma with dark haematoxylin-coloured ellipses; returns PNG path and truth."""
    rng = np.random.default_rng(seed)
    h, w = 600, 600
    img = np.empty((h, w, 3), np.float32)
    img[:] = (236, 170, 200)
    truth = np.zeros((h, w), bool)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(60):
        cy, cx = rng.uniform(10, h - 10), rng.uniform(10, w - 10)
        ry, rx, t = rng.uniform(5, 9), rng.uniform(4, 7), rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u, v = dy * np.cos(t) + dx * np.sin(t), -dy * np.sin(t) + dx * np.cos(t)
        truth |= (u / ry) ** 2 + (v / rx) ** 2 <= 1
    img[truth] = (75, 45, 130)
    img += rng.normal(0, 5, img.shape)
    path = tmp_path / "nuclei.png"
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
    return path, truth


def test_default_model_finds_generated_nuclei(tmp_path):
    path, truth = nuclei_slide(tmp_path)
    card = load_card("builtin:hed_nuclei")
    out = tmp_path / "raw.zarr"
    run_inference(
        str(path),
        card,
        load_model(card),
        str(out),
        InferenceOptions(dtype="float32"),
        sample="gen",
        mpp_override=0.5,
    )
    heads, boxes, _ = _read_raw(out)
    prob = np.zeros(truth.shape, np.float32)
    for (x0, y0, x1, y1), p in zip(boxes, heads["nucleus"][..., 0]):
        ph, pw = prob[y0:y1, x0:x1].shape
        prob[y0:y1, x0:x1] = p[:ph, :pw]
    inside, outside = prob[truth], prob[~truth]
    # Pixel-level ROC AUC (Mann-Whitney U / n1 n2): threshold-free separation of nuclei
    # from stroma; 0.95 leaves room only for blurred rims at ellipse edges.
    auc = mannwhitneyu(inside, outside).statistic / (inside.size * outside.size)
    assert auc >= 0.95
    assert np.median(inside) > 0.9 and np.median(outside) < 0.1


def test_unknown_model_is_named():
    with pytest.raises(
        ModelError, match="config field 'model.card': unknown built-in model 'nope'"
    ):
        load_card("builtin:nope")
    with pytest.raises(
        ModelError, match="config field 'model.card': model card 'x.yaml' not found"
    ):
        load_card("x.yaml")


def test_tile_card_refused_for_dense_inference():
    from histoflow.models.card import load_dense_card

    with pytest.raises(ModelError, match="kind 'tile'; tile-level models run in the 'tiles'"):
        load_dense_card(str(REPO / "workflow/histoflow/tiles/cards/stain_stats.yaml"))


def test_card_with_wrong_output_shape(tmp_path):
    torch.jit.script(TinyNet().eval()).save(str(tmp_path / "tiny.pt"))
    path = write_tiny_card(tmp_path, {"torchscript": "tiny.pt"})
    card = yaml.safe_load(open(path))
    card["patch_output"] = [66, 66]
    open(path, "w").write(yaml.safe_dump(card))
    with pytest.raises(ModelError, match=r"head 'tissue' gives shape \(1, 3, 64, 64\), but card"):
        load_model(load_card(path))


def test_card_schema_error_names_field(tmp_path):
    path = write_tiny_card(tmp_path, {"builtin": "hed_nuclei"})
    card = yaml.safe_load(open(path))
    card["heads"][0]["activation"] = "relu"
    open(path, "w").write(yaml.safe_dump(card))
    with pytest.raises(ModelError, match=r"field 'heads.0.activation'"):
        load_card(path)


def tiny_factory():
    return TinyNet()


def test_entrypoint_weights_only(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "tinymod.py").write_text(
        "import torch\nfrom test_infer import TinyNet\n\ndef make():\n    return TinyNet()\n"
    )
    torch.save(TinyNet().state_dict(), tmp_path / "w.pt")
    card = load_card(write_tiny_card(tmp_path, {"entrypoint": "tinymod:make", "weights": "w.pt"}))
    load_model(card)
    assert card.weights_sha256()
    # A pickled module (not a state dict of tensors) needs arbitrary unpickling: refused.
    torch.save(TinyNet(), tmp_path / "w.pt")
    with pytest.raises(ModelError, match="needs arbitrary unpickling"):
        load_model(load_card(str(tmp_path / "tiny.yaml")))
    (tmp_path / "w.pt").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="weights file '.*w.pt'"):
        load_model(load_card(str(tmp_path / "tiny.yaml")))
