"""Each published HoVer-Net card end to end on a small crop of the demo slide.

The checkpoint is the formula checkpoint of the published key listing
(`../shared/reference`, beside the clone) with its output layers adjusted on the crop's
first patch (see `checkpoint`): the formula weights alone predict almost no nucleus and
hv maps in which the published rule finds no marker. Stages mask, infer, merge, instances
and export run on one patch at the card's resolution: HoVer-Net gives nuclei with types,
the same as the published post-processing of the merged maps (HoVer-Net+ also gives
tissue-layer regions and a class map), and the exports are written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from conftest import run_workflow
from histoflow.instances.hovernet_published import energy_map, hovernet_instances
from histoflow.instances.tasks import tasks_from_card
from histoflow.io.instance_table import read_instance_table
from histoflow.io.maps_zarr import open_maps
from histoflow.models.card import load_card
from histoflow.models.hovernet import formula_state_dict, load_checkpoint, published_model
from histoflow.slide import open_slide
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("HISTOFLOW_REFERENCE", REPO.parent / "shared" / "reference"))
LISTING = REFERENCE / "tiatoolbox-2.1.3-nucleus-checkpoint-keys.json"
CARDS = [
    "hovernet_fast-pannuke",
    "hovernet_fast-monusac",
    "hovernet_original-consep",
    "hovernet_original-kumar",
    "hovernetplus-oed",
]
# One output patch: the adjusted hv maps of neighbouring patches meet with jumps whose
# derivatives dominate the published min-max normalisation, leaving no marker.


def marker_share(feature: np.ndarray) -> float:
    """Share of pixels the published rule would make markers of (energy < 0.4) with
    this feature map as both hv maps."""
    hv = np.stack([feature, feature], axis=-1)
    return float((energy_map(hv, np.ones(feature.shape, bool), 21) < 0.4).mean())


def checkpoint(name: str, rgb: np.ndarray, path: Path) -> Path:
    """The formula checkpoint, made to find objects on `rgb`: the np, tp and ls output
    biases centred on their median logits, and the hv output layer reading the two
    decoder channels whose maps give the published rule markers on most pixels (the
    formula's own hv maps give it none)."""
    state = formula_state_dict(json.loads(LISTING.read_text())[name]["keys"])
    model = load_checkpoint(state, published_model(name))
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float()
    seen = {}
    model.decoder["hv"].u0.conv.register_forward_hook(lambda _m, i, _o: seen.update(f=i[0][0]))
    with torch.inference_mode():
        out = model(x)
    for head, logits in out.items():
        if head == "hv":
            continue
        flat = logits[0].flatten(1)  # (C, H*W)
        if head == "np":  # foreground: the top 35 % of the nucleus logit's margin
            shift = torch.tensor([0.0, -float((flat[1] - flat[0]).quantile(0.65))])
        else:
            shift = -flat.median(dim=1).values
        key = f"decoder.{head}.u0.conv.bias"
        state[key] = state[key] + shift.to(state[key].dtype)
    share = np.array([marker_share(f.numpy()) for f in seen["f"]])
    pick = np.argsort(np.abs(share - 0.8))[:2]
    weight = torch.zeros_like(state["decoder.hv.u0.conv.weight"])
    weight[0, pick[0]] = weight[1, pick[1]] = 1.0
    state["decoder.hv.u0.conv.weight"] = weight
    state["decoder.hv.u0.conv.bias"] = torch.zeros_like(state["decoder.hv.u0.conv.bias"])
    torch.save(state, path)
    return path


@pytest.mark.e2e
@pytest.mark.skipif(not LISTING.is_file(), reason=f"key listing not found: {LISTING}")
@pytest.mark.parametrize("name", CARDS)
def test_published_card_end_to_end(tmp_path, demo_slide, name):
    card = load_card(f"builtin:{name}").card
    mpp, stride, patch = card["mpp"], card["stride"][0], card["patch_input"][0]
    side = stride
    with open_slide(demo_slide) as slide:
        crop = slide.read_region(1000, 2000, side, side, mpp)  # epidermis
        first = slide.read_region(1000, 2000, patch, patch, mpp)
    Image.fromarray(crop).save(tmp_path / "crop.png")
    weights = checkpoint(name, np.ascontiguousarray(first[..., :3]), tmp_path / "w.pth")
    config = {
        "stages": ["mask", "infer", "merge", "instances", "export"],
        "model": {"card": f"builtin:{name}", "weights": str(weights)},
        "mask": {"min_tissue_um2": 100.0},  # the crop is smaller than the default
        "inference": {"min_tissue_fraction": 0.0, "batch_size": 4},
        "instances": {"workers": 1},
        "export": {"formats": ["geojson", "tsv"]},
        "keep": ["raw", "maps"],  # raw.zarr is checked below
    }
    samples = [{"sample": "crop", "path": str(tmp_path / "crop.png"), "mpp": mpp}]
    run = tmp_path / "run"
    run_workflow(run, samples=samples, config=config)
    out = run / "results" / "crop"
    raw = zarr.open_group(str(out / "infer" / "raw.zarr"), mode="r")
    assert raw.attrs["model"]["name"] == name
    table, meta = read_instance_table(out / "instances" / "instances.parquet")
    assert meta["methods"]["nuclei"] == "hovernet"
    assert meta["tile_shape"][0] >= side and meta["margin"] == card["margin"]
    tasks = np.asarray(table.column("task").to_pylist())
    class_id = np.asarray(table.column("class_id").to_pylist())
    nuclei = class_id[tasks == "nuclei"]
    assert len(nuclei) >= 1  # dozens for fast mode's 164 px, one or two for original's 80
    maps = open_maps(out / "merge" / "maps.zarr")
    task = tasks_from_card(maps.attrs["model"], maps.channels, maps.mpp)[0]
    arrays = maps.read_rows(sorted(task.heads.values()), 0, maps.shape[0])
    typed = arrays.get(task.heads.get("type"))
    ref = hovernet_instances(arrays["np"], arrays["hv"], typed, task.hover_params())
    assert ref.count == len(nuclei)
    assert ref.types is None or sorted(ref.types) == sorted(nuclei)
    n_types = len(card["postprocess"][0]["classes"])
    if n_types > 1:  # with a type head: voted types, background only if nothing else
        assert np.all((nuclei >= 1) & (nuclei < n_types)), np.unique(nuclei)
    else:
        assert np.all(nuclei == 0)
    if name == "hovernetplus-oed":
        layers = class_id[tasks == "layers"]
        assert len(layers) >= 1 and np.all((layers >= 1) & (layers < 5))  # no Background
        cmap = zarr.open_array(str(out / "instances" / "classmap.zarr"), mode="r")
        assert cmap.attrs["task"] == "layers" and len(np.unique(cmap[:])) >= 2
    else:
        assert set(tasks) == {"nuclei"} and not (out / "instances" / "classmap.zarr").exists()
    geojson = json.loads((out / "export" / "crop.geojson").read_text())
    assert len(geojson["features"]) == len(table)
    lines = (out / "export" / "crop.objects.tsv").read_text().splitlines()
    assert len(lines) == len(table) + 1
