"""HoVer-Net checkpoints: the five TIAToolbox key layouts load strictly, so do the original
repository's `{"desc": ...}` files with `module.` keys; bad files fail naming the file and
the keys. Also the shapes of both modes and the TensorFlow 'same' padding."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from histoflow.errors import ModelError
from histoflow.models.hovernet import (
    PUBLISHED,
    HoVerNet,
    HoVerNetPlus,
    load_checkpoint,
    published_model,
    to_local,
    to_published,
)
from histoflow.models.hovernet.layers import Upsample2x, tf_same_pad

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("HISTOFLOW_REFERENCE", REPO.parent / "shared" / "reference"))
LISTING = REFERENCE / "tiatoolbox-2.1.3-nucleus-checkpoint-keys.json"


def published_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A model's state dict under the published key names."""
    return {to_published(k): v.clone() for k, v in model.state_dict().items()}


@pytest.mark.skipif(not LISTING.is_file(), reason=f"key listing not found: {LISTING}")
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_layout_loads_strict(name):
    entries = json.loads(LISTING.read_text())[name]["keys"]
    state = {k: torch.zeros(shape, dtype=getattr(torch, dt)) for k, shape, dt in entries}
    model = load_checkpoint(state, published_model(name))
    ours = model.state_dict()
    assert len(ours) == len(entries)
    for key, shape, dtype in entries:
        tensor = ours[to_local(key)]
        assert to_published(to_local(key)) == key
        assert list(tensor.shape) == shape and str(tensor.dtype) == f"torch.{dtype}", key
        assert not tensor.any(), key  # every entry came from the checkpoint


def test_original_repository_file_loads(tmp_path):
    source = HoVerNet("fast", num_types=None)
    wrapped = {"desc": {f"module.{k}": v for k, v in published_state(source).items()}}
    wrapped["epoch"] = 50
    path = tmp_path / "hovernet_original_repo.tar"
    torch.save(wrapped, path)
    model = load_checkpoint(path, HoVerNet("fast", num_types=None))
    expected = source.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = published_state(HoVerNet("fast", num_types=None))
    del state["decoder.hv.u3.dense.units.2.preact_bna/bn.running_var"]
    state["decoder.xx.u0.conv.bias"] = torch.zeros(2)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ModelError) as err:
        load_checkpoint(path, HoVerNet("fast", num_types=None))
    msg = str(err.value)
    assert "broken.pth" in msg
    assert "1 missing keys: decoder.hv.u3.dense.units.2.preact_bna/bn.running_var" in msg
    assert "1 unexpected keys: decoder.xx.u0.conv.bias" in msg


def test_wrong_branch_count_is_refused():
    # a checkpoint with a tp branch (6 types) into a model built for 5 types, then for none
    state = published_state(HoVerNet("fast", num_types=6))
    with pytest.raises(ModelError, match=r"shape keys: decoder\.tp\.u0\.conv\.weight"):
        load_checkpoint(state, HoVerNet("fast", num_types=5))
    with pytest.raises(ModelError, match=r"unexpected keys: decoder\.tp\."):
        load_checkpoint(state, HoVerNet("fast", num_types=None))


def test_pickled_objects_and_broken_files_are_refused(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"desc": {}, "optimizer": Path("x")}, path)
    with pytest.raises(ModelError, match=r"pickled\.pth.*arbitrary unpickling"):
        load_checkpoint(path, HoVerNet("fast"))
    path.write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match=r"pickled\.pth.*not a torch file"):
        load_checkpoint(path, HoVerNet("fast"))
    good = tmp_path / "good.pth"
    torch.save({"x": torch.zeros(3)}, good)
    path.write_bytes(good.read_bytes()[:100])  # truncated download
    with pytest.raises(ModelError, match=r"pickled\.pth"):
        load_checkpoint(path, HoVerNet("fast"))
    with pytest.raises(ModelError, match="holds list, not a state dict"):
        load_checkpoint([1], HoVerNet("fast"))


@pytest.mark.parametrize(
    ("model", "size", "heads"),
    [
        (lambda: HoVerNet("fast", num_types=6), (256, 164), {"tp": 6, "np": 2, "hv": 2}),
        (lambda: HoVerNet("original", num_types=None), (270, 80), {"np": 2, "hv": 2}),
        (lambda: HoVerNetPlus(3, 5), (256, 164), {"tp": 3, "np": 2, "hv": 2, "ls": 5}),
    ],
)
def test_patch_sizes_and_heads(model, size, heads):
    net = model().eval()
    with torch.inference_mode():
        out = net(torch.full((1, 3, size[0], size[0]), 128.0))
    assert {k: v.shape for k, v in out.items()} == {
        k: (1, c, size[1], size[1]) for k, c in heads.items()
    }
    assert (net.patch_input, net.patch_output) == size


def test_unknown_mode_and_name():
    with pytest.raises(ValueError, match="mode"):
        HoVerNet("slow")
    with pytest.raises(ModelError, match="unknown HoVer-Net model"):
        published_model("hovernet_fast-kumar")


def test_tf_same_padding_and_upsampling():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    # stride 2 on an even size: 1 px, all of it bottom/right; stride 1, k=7: 3 px each side
    assert torch.equal(tf_same_pad(x, 3, 2), F.pad(x, (0, 1, 0, 1)))
    assert torch.equal(tf_same_pad(x, 7, 1), F.pad(x, (3, 3, 3, 3)))
    assert tf_same_pad(x[:, :, :5, :5], 3, 2).shape[-1] == 7
    up = Upsample2x()
    assert torch.equal(up(x), F.interpolate(x, scale_factor=2, mode="nearest"))
