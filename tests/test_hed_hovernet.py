"""HedHoverNet, the weight-free stand-in with HoVer-Net fast's heads (benchmarks of the
stages around the network): HoVer-Net's shapes and value ranges, hv pointing away from
each nucleus' centre, and maps that the published post-processing splits into the
nuclei that are there."""

from __future__ import annotations

import numpy as np
import torch
from histoflow.instances.hovernet_published import hovernet_instances
from histoflow.models.hed import HedHoverNet

NUCLEUS_RGB = (70, 40, 130)  # haematoxylin-like


def disks(centres, radius=14.0, size=256) -> np.ndarray:
    """A white (H, W, 3) uint8 image with dark purple disks."""
    yy, xx = np.mgrid[:size, :size]
    img = np.full((size, size, 3), 245, np.uint8)
    for cy, cx in centres:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = NUCLEUS_RGB
    return img


def heads(img: np.ndarray) -> dict[str, np.ndarray]:
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        out = HedHoverNet()(x)
    return {
        "np": torch.softmax(out["np"], 1)[0, 1].numpy(),
        "hv": out["hv"][0].permute(1, 2, 0).numpy(),
        "tp": torch.softmax(out["tp"], 1)[0].permute(1, 2, 0).numpy(),
    }


def test_heads_have_hovernet_fast_shapes_and_ranges():
    x = torch.rand(2, 3, 256, 256)
    with torch.inference_mode():
        out = HedHoverNet(num_types=6)(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "np": (2, 2, 164, 164),
        "hv": (2, 2, 164, 164),
        "tp": (2, 6, 164, 164),
    }
    assert out["hv"].abs().max() <= 1.0


def test_hv_points_away_from_the_centre_and_np_covers_the_nucleus():
    maps = heads(disks([(128, 128)]))
    c = 128 - 46  # the output is the centre 164 px of the input
    assert maps["np"][c, c] > 0.99 and maps["np"][5, 5] < 0.01
    hv = maps["hv"]
    assert hv[c, c + 8, 0] > 0.2 and hv[c, c - 8, 0] < -0.2  # horizontal: x - cx
    assert hv[c + 8, c, 1] > 0.2 and hv[c - 8, c, 1] < -0.2  # vertical: y - cy
    assert abs(hv[c, c, 0]) < 0.05 and abs(hv[c, c, 1]) < 0.05
    assert np.all(np.abs(hv[:10, :10]) < 1e-3)  # glass: flat


def test_published_postprocessing_splits_touching_nuclei():
    # Two pairs of touching disks and one alone: five nuclei.
    centres = [(90, 80), (90, 106), (160, 150), (184, 150), (150, 80)]
    maps = heads(disks(centres, radius=13.0))
    found = hovernet_instances(maps["np"], maps["hv"], maps["tp"])
    assert found.labels.max() == len(centres)
    for cy, cx in centres:
        assert found.labels[cy - 46, cx - 46] > 0
    assert len(np.unique([found.labels[cy - 46, cx - 46] for cy, cx in centres])) == 5
    assert np.all(found.types > 0)  # nuclei are not voted background
