"""Model sources: built-in HoVer-Net architectures with `model.weights`, torch.export
programs (.pt2), entry points that fail on import; the published cards' IO."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml
import zarr
from conftest import run_workflow
from histoflow.errors import ModelError
from histoflow.hashing import sha256_file
from histoflow.models.card import load_card, load_dense_card
from histoflow.models.hovernet import MODES, HoVerNet, to_published
from histoflow.models.loader import ARCHITECTURES, build_model, load_model
from histoflow.slide import open_slide
from PIL import Image

# TIAToolbox 2.1.3 pretrained_model.yaml: mpp, patch in, patch out (= stride), tile, margin
PUBLISHED_IO = {
    "hovernet_fast-pannuke": (0.25, 256, 164, 1024, 128),
    "hovernet_fast-monusac": (0.25, 256, 164, 1024, 128),
    "hovernet_original-consep": (0.25, 270, 80, 1024, 128),
    "hovernet_original-kumar": (0.25, 270, 80, 2048, 128),
    "hovernetplus-oed": (0.5, 256, 164, 2048, 128),
}


def published_checkpoint(card_name: str, path: Path, wrap=False) -> Path:
    """A checkpoint in the published key layout for a card's architecture (random init);
    `wrap`: as the original repository saves it, `{"desc": ...}` with `module.` keys."""
    source = load_card(f"builtin:{card_name}").card["source"]
    torch.manual_seed(1)
    model = ARCHITECTURES[source["builtin"]](**source["kwargs"])
    state = {to_published(k): v for k, v in model.state_dict().items()}
    if wrap:
        state = {"desc": {f"module.{k}": v for k, v in state.items()}, "epoch": 50}
    torch.save(state, path)
    return path


@pytest.mark.parametrize("name", sorted(PUBLISHED_IO))
def test_cards_carry_the_published_io_and_fit_the_architecture(name):
    card = load_card(f"builtin:{name}").card
    mpp, pin, pout, tile, margin = PUBLISHED_IO[name]
    assert card["mpp"] == mpp
    assert card["patch_input"] == [pin, pin] and card["patch_output"] == [pout, pout]
    assert card["stride"] == [pout, pout]
    assert card["tile_shape"] == [tile, tile] and card["margin"] == margin
    assert card["input"] == {"scale": 1, "mean": [0.0] * 3, "std": [1.0] * 3}
    source = card["source"]
    mode = "original" if source["builtin"] == "hovernet_original" else "fast"
    assert MODES[mode][:2] == (pin, pout)
    heads = {h["name"]: h["channels"] for h in card["heads"]}
    tasks = {t["task"]: t for t in card["postprocess"]}
    assert tasks["nuclei"]["method"] == "hovernet"
    n_types = source["kwargs"]["num_types"]
    if n_types is None:
        assert "tp" not in heads
    else:
        assert heads["tp"] == n_types == len(tasks["nuclei"]["classes"])
        assert tasks["nuclei"]["classes"][0]["name"] == "Background"
    if name == "hovernetplus-oed":
        assert heads["ls"] == 5 and tasks["layers"]["method"] == "semantic"
        assert [c["name"] for c in tasks["layers"]["classes"]][2:] == [
            "Basal Epithelium",
            "(Core) Epithelium",
            "Keratin",
        ]


def test_hovernet_card_without_weights_names_card_and_field():
    card = load_dense_card("builtin:hovernet_fast-pannuke")
    with pytest.raises(ModelError, match=r"'hovernet_fast-pannuke'.*config field 'model.weights'"):
        build_model(card)


def test_model_weights_loads_a_published_checkpoint_and_goes_into_provenance(tmp_path):
    weights = published_checkpoint("hovernetplus-oed", tmp_path / "oed.pth")
    card = load_dense_card("builtin:hovernetplus-oed", weights)
    model = load_model(card)  # strict load, then the dummy batch against the card's heads
    expected = torch.load(weights, weights_only=True)["conv0./.weight"]
    assert torch.equal(model.conv0.conv.weight, expected)
    assert card.weights_sha256() == sha256_file(weights)
    assert weights.resolve() in card.files()


def test_original_repository_file_loads_and_a_misfit_names_the_field(tmp_path):
    wrapped = published_checkpoint("hovernet_original-kumar", tmp_path / "k.tar", wrap=True)
    model = build_model(load_dense_card("builtin:hovernet_original-kumar", wrapped))
    assert isinstance(model, HoVerNet) and model.mode == "original"
    with pytest.raises(ModelError, match=r"config field 'model.weights': checkpoint .*k.tar"):
        build_model(load_dense_card("builtin:hovernet_original-consep", wrapped))


def test_model_weights_must_exist_and_fit_the_source(tmp_path):
    with pytest.raises(ModelError, match=r"config field 'model.weights'.*not found"):
        load_card("builtin:hovernet_fast-pannuke", tmp_path / "nope.pth")
    (tmp_path / "m.ts").write_bytes(b"")  # only its presence is checked here
    card = tmp_path / "ts.yaml"
    card.write_text(yaml.safe_dump(tiny_card({"torchscript": "m.ts"})))
    (tmp_path / "w.pth").write_bytes(b"x")
    with pytest.raises(ModelError, match=r"model.weights.*takes no separate weights"):
        load_card(str(card), tmp_path / "w.pth")


def test_weight_free_builtin_refuses_weights(tmp_path):
    (tmp_path / "w.pth").write_bytes(b"x")
    with pytest.raises(ModelError, match=r"weight-free built-in 'hed_nuclei'.*model.weights"):
        build_model(load_dense_card("builtin:hed_nuclei", tmp_path / "w.pth"))


def test_bad_builtin_kwargs_name_the_field(tmp_path):
    card = yaml.safe_load(load_card("builtin:hovernet_fast-pannuke").path.read_text())
    card["source"]["kwargs"] = {"num_type": 6}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(card))
    with pytest.raises(ModelError, match=r"field 'source.kwargs'.*hovernet_fast"):
        build_model(load_card(str(path)))


# ---- torch.export ----


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 5)
        self.bn = torch.nn.BatchNorm2d(2)

    def forward(self, x):
        y = self.bn(self.conv(x))
        return {"tissue": y, "density": torch.sigmoid(y[:, :1])}


def tiny_card(source: dict) -> dict:
    return {
        "name": "tiny",
        "kind": "dense",
        "mpp": 2.0,
        "patch_input": [20, 20],
        "patch_output": [16, 16],
        "heads": [
            {"name": "tissue", "channels": 2, "activation": "softmax"},
            {"name": "density", "channels": 1},
        ],
        "source": source,
    }


def export_tiny(path: Path) -> Tiny:
    torch.manual_seed(0)
    model = Tiny().eval()
    model.bn.running_mean.fill_(0.3)  # eval-mode statistics must be the ones exported
    batch = torch.export.Dim("batch", min=1, max=256)
    program = torch.export.export(model, (torch.rand(2, 3, 20, 20),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return model


def test_exported_program_loads_as_a_source(tmp_path):
    original = export_tiny(tmp_path / "tiny.pt2")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_card({"export": "tiny.pt2"})))
    card = load_card(str(path))
    model = load_model(card)  # dummy batch of 1 against the card's heads
    x = torch.rand(5, 3, 20, 20)
    with torch.inference_mode():
        ours, theirs = model(x), original(x)
    assert torch.allclose(ours["tissue"], theirs["tissue"], atol=1e-6)
    assert card.weights_sha256() == sha256_file(tmp_path / "tiny.pt2")
    assert (tmp_path / "tiny.pt2").resolve() in card.files()
    assert not model.training


def test_exported_program_loads_as_a_tile_model(tmp_path):
    from histoflow.tiles.model import build_tile_model, load_tile_card, model_files

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1))
    model = torch.nn.Sequential(model, torch.nn.Flatten()).eval()
    batch = torch.export.Dim("batch", min=1, max=256)
    program = torch.export.export(model, (torch.rand(2, 3, 16, 16),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(tmp_path / "t.pt2"))
    card = {
        "name": "tiny_tiles",
        "kind": "tile",
        "mpp": 1.0,
        "patch_input": [16, 16],
        "output": {"dim": 4, "type": "embedding"},
        "source": {"export": "t.pt2"},
    }
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(card))
    tiles = build_tile_model(load_tile_card(tmp_path / "t.yaml"))
    x = torch.rand(3, 3, 16, 16)
    with torch.inference_mode():
        assert torch.allclose(tiles(x), model(x), atol=1e-6)
    assert model_files(str(tmp_path / "t.yaml"))[1] == str(tmp_path / "t.pt2")


def test_corrupt_exported_program_names_the_field(tmp_path):
    (tmp_path / "bad.pt2").write_bytes(b"not a zip")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tiny_card({"export": "bad.pt2"})))
    with pytest.raises(ModelError, match=r"bad.yaml': field 'source.export': .*bad.pt2"):
        build_model(load_card(str(path)))


def test_card_with_two_sources_is_refused(tmp_path):
    path = tmp_path / "two.yaml"
    (tmp_path / "m.pt2").write_bytes(b"")
    (tmp_path / "m.ts").write_bytes(b"")
    path.write_text(yaml.safe_dump(tiny_card({"export": "m.pt2", "torchscript": "m.ts"})))
    with pytest.raises(ModelError, match="exactly one of builtin, torchscript, export"):
        load_card(str(path))


# ---- entry points whose module fails on import ----


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ("import torch\nraise RuntimeError('CUDA driver missing')\n", "RuntimeError"),
        ("import not_a_real_package_xyz\n", "ModuleNotFoundError"),
        ("def make(:\n", "SyntaxError"),
        ("import sys\nsys.exit(3)\n", "SystemExit"),
        ("x = {}['key']\n", "KeyError"),
    ],
)
def test_entrypoint_module_raising_on_import_is_one_error(tmp_path, body, kind):
    (tmp_path / "brokenmod.py").write_text(body)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(tiny_card({"entrypoint": "brokenmod:make"})))
    with pytest.raises(ModelError) as info:
        build_model(load_card(str(path)))
    message = str(info.value)
    assert message.startswith(f"model card '{path.resolve()}': field 'source.entrypoint': ")
    assert f"cannot import module 'brokenmod' of 'brokenmod:make': {kind}" in message
    assert "\n" not in message
    assert info.value.__suppress_context__  # one error, not a chained traceback
    assert str(tmp_path) not in sys.path


# ---- through the workflow ----


@pytest.mark.e2e
def test_builtin_card_with_weights_through_infer_rule(tmp_path, demo_slide):
    """model.weights reaches the job and its sha256 the provenance; a new file reruns
    inference; a missing file fails the job naming the field."""
    with open_slide(demo_slide) as slide:  # one patch of the demo slide at 0.5 µm/px
        Image.fromarray(slide.read_region(800, 1000, 164, 164, 0.5)).save(tmp_path / "c.png")
    samples = [{"sample": "crop", "path": str(tmp_path / "c.png"), "mpp": 0.5}]
    weights = published_checkpoint("hovernetplus-oed", tmp_path / "oed.pth")
    config = {
        "stages": ["infer"],
        "model": {"card": "builtin:hovernetplus-oed", "weights": str(weights)},
        "inference": {"min_tissue_fraction": 0.0, "batch_size": 4},
    }
    run = tmp_path / "run"
    run_workflow(run, samples=samples, config=config)
    attrs = dict(zarr.open_group(str(run / "results/crop/infer/raw.zarr"), mode="r").attrs)
    assert attrs["weights_sha256"] == sha256_file(weights)
    assert attrs["model"]["name"] == "hovernetplus-oed" and attrs["stride"] == [164, 164]
    assert [h["name"] for h in attrs["heads"]] == ["np", "hv", "tp", "ls"]
    # Other weights in the same file: inference reruns and records the new hash.
    state = torch.load(weights, weights_only=True)
    state["conv0./.weight"] = state["conv0./.weight"] * 0.5
    torch.save(state, weights)
    run_workflow(run, samples=samples, config=config)
    attrs = dict(zarr.open_group(str(run / "results/crop/infer/raw.zarr"), mode="r").attrs)
    assert attrs["weights_sha256"] == sha256_file(weights)
    config["model"]["weights"] = str(tmp_path / "missing.pth")  # the job says which field
    proc = run_workflow(tmp_path / "none", samples=samples, config=config, check=False)
    assert proc.returncode != 0
    assert "histoflow error: config field 'model.weights': weights file '" in proc.stdout
