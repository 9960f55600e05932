"""Channels-last forward: every kind of model (built-in, TorchScript, export, entry point)
gets channels-last input and weights, and raw.zarr holds the same values as with the
contiguous NCHW layout; inference.compile falls back with a warning where it cannot work;
the normaliser reuses one buffer and gives the values of the plain formula."""

import logging

import numpy as np
import pytest
import torch
import yaml
import zarr
from histoflow.inference import core
from histoflow.inference.runner import InferenceOptions, run
from histoflow.models.card import load_card
from histoflow.models.loader import load_model
from histoflow.synthetic.slides import make_nuclei_slide

ENTRYPOINT = """
import torch

SEEN = []


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 5)
        self.cls = torch.nn.Conv2d(8, 3, 1)

    def forward(self, x):
        SEEN.append(
            (x.is_contiguous(memory_format=torch.channels_last), x.is_contiguous(),
             self.conv.weight.is_contiguous(memory_format=torch.channels_last))
        )
        f = torch.relu(self.conv(x))
        return {"tissue": self.cls(f), "density": f[:, :1]}


def build():
    return Net()
"""


class Net(torch.nn.Module):
    """The entry point's network, for TorchScript and torch.export."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 5)
        self.cls = torch.nn.Conv2d(8, 3, 1)

    def forward(self, x):
        f = torch.relu(self.conv(x))
        return {"tissue": self.cls(f), "density": f[:, :1]}


def write_card(folder, source: dict) -> str:
    card = {
        "name": "tinycl",
        "kind": "dense",
        "mpp": 0.5,
        "patch_input": [68, 68],
        "patch_output": [64, 64],
        "input": {"scale": 255, "mean": [0.6, 0.5, 0.7], "std": [0.2, 0.25, 0.3]},
        "heads": [
            {"name": "tissue", "channels": 3, "activation": "softmax"},
            {"name": "density", "channels": 1, "activation": "none"},
        ],
        "source": source,
    }
    path = folder / "tinycl.yaml"
    path.write_text(yaml.safe_dump(card))
    return str(path)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("cl") / "nuclei.tif"
    make_nuclei_slide(path, width=320, height=256, mpp=0.5, seed=3)
    return path


@pytest.fixture(scope="module")
def cards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cards")
    (folder / "clnet.py").write_text(ENTRYPOINT)
    net = Net().eval()
    torch.jit.script(net).save(str(folder / "net.pt"))
    batch = torch.export.Dim("batch")
    program = torch.export.export(net, (torch.zeros(2, 3, 68, 68),), dynamic_shapes=({0: batch},))
    torch.export.save(program, folder / "net.pt2")
    out = {"builtin": "builtin:hed_nuclei"}
    for kind, source in [
        ("torchscript", {"torchscript": "net.pt"}),
        ("export", {"export": "net.pt2"}),
        ("entrypoint", {"entrypoint": "clnet:build"}),
    ]:
        sub = folder / kind
        sub.mkdir()
        for f in ("clnet.py", "net.pt", "net.pt2"):
            (sub / f).write_bytes((folder / f).read_bytes())
        out[kind] = write_card(sub, source)
    return out


def _heads(path):
    g = zarr.open_group(str(path), mode="r")
    return {k: g["heads"][k][:] for k in g["heads"].array_keys()}, dict(g.attrs)


def _run(slide, card_ref, out, **options):
    card = load_card(card_ref)
    model = load_model(card)
    batch = 1 if card.patch_input[0] > 100 else 5  # several batches for every card
    opts = InferenceOptions.from_config(
        dict(batch_size=batch, num_workers=0, dtype="float32", min_tissue_fraction=0.0) | options
    )
    run(str(slide), card, model, str(out), opts, sample="cl")
    return model


@pytest.mark.parametrize("kind", ["builtin", "torchscript", "export", "entrypoint"])
def test_layouts_give_the_same_raw_store(tmp_path, slide, cards, kind):
    stores = {}
    for layout in ("channels_last", "contiguous"):
        model = _run(slide, cards[kind], tmp_path / f"{layout}.zarr", memory_format=layout)
        stores[layout] = _heads(tmp_path / f"{layout}.zarr")
        if kind == "entrypoint":
            import clnet

            seen = set(clnet.SEEN[1:])  # [0] is the load-time check on a dummy batch
            clnet.SEEN.clear()
            # input and weights in the asked layout (a 68 px, 3-channel batch is not
            # both at once)
            want = (True, False, True) if layout == "channels_last" else (False, True, False)
            assert seen == {want}
        if kind in ("entrypoint", "builtin") and layout == "channels_last":
            convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
            assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    (a, attrs_a), (b, attrs_b) = stores["channels_last"], stores["contiguous"]
    assert attrs_a == attrs_b and attrs_a["written"] >= 2  # more than one batch
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].shape == b[name].shape
        # the layout changes a convolution's summation order at most
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=2e-6)


def test_float16_store_of_layouts_within_one_step(tmp_path, slide, cards):
    """The default float16 store: the two layouts differ by at most one float16 step (plus
    the float32 summation-order difference, which near zero spans several subnormal steps)."""
    heads = []
    for layout in ("channels_last", "contiguous"):
        _run(
            slide,
            cards["torchscript"],
            tmp_path / f"{layout}.zarr",
            memory_format=layout,
            dtype="float16",
        )
        g = zarr.open_group(str(tmp_path / f"{layout}.zarr"), mode="r")
        g16 = {k: g["heads"][k][:] for k in g["heads"].array_keys()}
        heads.append(g16)
    for name, a in heads[0].items():
        b = heads[1][name]
        assert a.dtype == np.float16
        step = np.spacing(np.maximum(np.abs(a), np.abs(b)).astype(np.float16))
        assert (np.abs(a.astype(np.float32) - b.astype(np.float32)) <= step + 2e-6).all()


def test_auto_layout_is_channels_last_on_cpu():
    assert core.memory_format("auto", torch.device("cpu")) is torch.channels_last
    assert core.memory_format("auto", torch.device("mps")) is torch.contiguous_format
    assert core.memory_format("contiguous", torch.device("cpu")) is torch.contiguous_format


def test_normaliser_reuses_its_buffer_and_matches_the_formula():
    spec = {"scale": 255, "mean": [0.6, 0.5, 0.7], "std": [0.2, 0.25, 0.3]}
    norm = core.Normaliser(spec, torch.device("cpu"), layout=torch.channels_last)
    rng = np.random.default_rng(0)
    mean = torch.tensor(spec["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(spec["std"]).view(1, 3, 1, 1)
    pointers = []
    for _ in range(2):
        batch = torch.from_numpy(rng.integers(0, 256, (4, 9, 7, 3), dtype=np.uint8))
        x = norm(batch)
        pointers.append(x.data_ptr())
        want = (batch.permute(0, 3, 1, 2).float() / 255 - mean) / std
        assert torch.equal(x, want) and x.is_contiguous(memory_format=torch.channels_last)
    assert pointers[0] == pointers[1]  # the same buffer, refilled


def test_compile_of_torchscript_falls_back_with_a_warning(tmp_path, slide, cards, caplog):
    caplog.set_level(logging.WARNING)
    _run(slide, cards["torchscript"], tmp_path / "c.zarr", compile=True)
    assert "cannot go through torch.compile" in caplog.text
    assert _heads(tmp_path / "c.zarr")[1]["written"] > 0


def test_compile_failure_is_a_warning_not_an_error(caplog):
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError(f"unsupported op on {tuple(x.shape)}")

    caplog.set_level(logging.WARNING)
    model = Broken()
    assert core.compile_model(model, torch.zeros(1, 3, 8, 8)) is model
    assert "torch.compile does not work" in caplog.text and "unsupported op" in caplog.text
