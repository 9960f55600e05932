"""Stain normalisation (issue 16, item 7) on synthetic restains with known stain vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from histoflow.errors import ConfigError, SlideError
from histoflow.stain_norm.macenko import fit_macenko
from histoflow.stain_norm.transfer import (
    StainTransfer,
    plan_transfer,
    transfer_matrix,
    transfer_numpy,
)
from PIL import Image
from scipy import ndimage

# Macenko's reference H&E (the target lab) and a lab whose haematoxylin is bluer and
# whose eosin is pinker (the slide to normalise).
TARGET = np.array([[0.5626, 0.7201, 0.4062], [0.2159, 0.8012, 0.5581]])
SOURCE = np.array([[0.4000, 0.7800, 0.4800], [0.1500, 0.8600, 0.4900]])


def unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def tissue_concentrations(shape, seed):
    """(h, w, 2) haematoxylin and eosin densities: glass, stroma and nuclei."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random(shape), 6)
    eosin = 1.0 + 0.8 * (field - field.min()) / np.ptp(field)  # stroma: dense eosin
    tissue = ndimage.gaussian_filter(rng.random(shape), 12) > 0.5
    nuclei = np.clip(
        ndimage.gaussian_filter((rng.random(shape) > 0.995).astype(float), 2.5) * 40, 0, 1.4
    )
    # Nuclei take up haematoxylin, the stroma around them eosin.
    stroma = eosin * (1 - nuclei / 1.4)
    conc = np.stack([nuclei + 0.01, stroma + 0.01], -1)
    return conc * tissue[..., None]


def render(conc, vectors, scale=1.0):
    od = (conc * scale) @ unit(vectors)
    return np.clip(np.rint(256 * np.exp(-od) - 1), 0, 255).astype(np.uint8)


def angle_deg(a, b):
    return np.degrees(np.arccos(np.clip((unit(a) * unit(b)).sum(-1), -1, 1)))


@pytest.fixture(scope="module")
def slide_and_target():
    content = tissue_concentrations((384, 384), seed=1)
    slide = render(content, SOURCE, scale=0.7)  # a paler lab, too
    target = render(tissue_concentrations((384, 384), seed=2), TARGET)
    return content, slide, target


def test_macenko_recovers_known_stain_vectors(slide_and_target):
    _, slide, target = slide_and_target
    for image, truth in ((slide, SOURCE), (target, TARGET)):
        fit = fit_macenko(image)
        assert (angle_deg(fit.vectors, truth) < 3.0).all(), angle_deg(fit.vectors, truth)


def test_restained_slide_looks_like_its_content_in_the_target_stains(slide_and_target):
    content, slide, target = slide_and_target
    matrix = transfer_matrix(fit_macenko(slide), fit_macenko(target))
    restained = transfer_numpy(slide, matrix)
    expected = render(content, TARGET)  # the same tissue, stained by the target lab
    after = np.abs(restained.astype(int) - expected).mean()
    before = np.abs(slide.astype(int) - expected).mean()
    assert after < 3.0 and before > 4 * after, (before, after)
    # Glass stays glass.
    glass = content.sum(-1) == 0
    assert np.abs(restained[glass].astype(int) - 255).max() <= 1


def test_device_transfer_equals_the_reference(slide_and_target):
    _, slide, target = slide_and_target
    matrix = transfer_matrix(fit_macenko(slide), fit_macenko(target))
    x = torch.from_numpy(slide).permute(2, 0, 1)[None].float()
    x = x.contiguous(memory_format=torch.channels_last)
    out = StainTransfer(matrix, torch.device("cpu"))(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    got = out[0].permute(1, 2, 0).round().numpy()
    assert np.abs(got - transfer_numpy(slide, matrix)).max() <= 1


def test_plan_names_the_field_or_the_sample(tmp_path, slide_and_target):
    _, slide, target = slide_and_target
    assert plan_transfer(None, slide, None, "S1", "/s.svs") is None
    with pytest.raises(ConfigError, match=r"'inference.stain_normalisation.target'.*not found"):
        plan_transfer({"target": str(tmp_path / "nope.png")}, slide, None, "S1", "/s.svs")
    Image.fromarray(np.full((64, 64, 3), 250, np.uint8)).save(tmp_path / "white.png")
    with pytest.raises(ConfigError, match=r"white\.png.*no usable stain"):
        plan_transfer({"target": str(tmp_path / "white.png")}, slide, None, "S1", "/s.svs")
    Image.fromarray(target).save(tmp_path / "target.png")
    blank = np.full_like(slide, 245)
    with pytest.raises(SlideError, match=r"sample 'S1'.*no stains to fit"):
        plan_transfer({"target": str(tmp_path / "target.png")}, blank, None, "S1", "/s.svs")
    matrix, record = plan_transfer(
        {"target": str(tmp_path / "target.png")}, slide, None, "S1", "/s.svs"
    )
    assert matrix.shape == (3, 3) and record["method"] == "macenko"
    assert len(record["target_sha256"]) == 64 and len(record["slide"]["vectors"]) == 2


@pytest.mark.e2e
def test_infer_patches_restains_its_input(tmp_path, demo_slide, slide_and_target):
    import zarr
    from conftest import run_workflow

    _, _, target = slide_and_target
    Image.fromarray(target).save(tmp_path / "target.png")
    stores = {}
    for name, stain in (("plain", None), ("restained", {"target": str(tmp_path / "target.png")})):
        run_workflow(
            tmp_path / name,
            samples=[{"sample": "cmu", "path": demo_slide}],
            config={
                "stages": ["mask", "infer"],
                "keep": ["raw"],
                "inference": {"stain_normalisation": stain, "dtype": "float32"},
            },
        )
        stores[name] = zarr.open_group(
            str(tmp_path / name / "results" / "cmu" / "infer" / "raw.zarr"), mode="r"
        )
    plain, restained = stores["plain"], stores["restained"]
    record = restained.attrs["stain_normalisation"]
    assert record["method"] == "macenko" and "stain_normalisation" not in plain.attrs
    assert np.isclose(record["target"]["vectors"], fit_macenko(target).vectors, atol=1e-5).all()
    assert plain.attrs["fingerprint"] != restained.attrs["fingerprint"]
    a, b = plain["heads"]["nucleus"][:], restained["heads"]["nucleus"][:]
    assert a.shape == b.shape and np.abs(a - b).mean() > 1e-3  # the model saw other pixels
