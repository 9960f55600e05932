"""Heatmap picture: colour where patches ran, plain slide elsewhere, read in bands."""

import numpy as np
import zarr
from histoflow.merge.heatmap import RAMP, render_heatmap
from PIL import Image


def test_heatmap_blends_only_covered_pixels(tmp_path):
    h, w = 400, 300
    slide = np.full((h, w, 3), 200, np.uint8)
    Image.fromarray(slide).save(tmp_path / "s.png")
    g = zarr.open_group(str(tmp_path / "maps.zarr"), mode="w")
    g.attrs.update(
        {
            "shape": [h, w],
            "mpp": 0.5,
            "scale": 1.0,
            "slide_mpp": 0.5,
            "model": {"name": "toy"},
            "heads": [{"name": "p", "channels": 1, "activation": "sigmoid"}],
        }
    )
    prob = np.zeros((h, w, 1), np.float32)
    prob[:, : w // 2] = 1.0
    cov = np.zeros((h, w), np.uint16)
    cov[: h // 2] = 1
    g.create_array("p", data=prob, chunks=(64, w, 1))
    g.create_array("coverage", data=cov, chunks=(64, w))
    out = render_heatmap(
        tmp_path / "maps.zarr",
        tmp_path / "s.png",
        tmp_path / "h.png",
        mpp_override=0.5,
        max_side=200,
    )
    img = np.asarray(Image.open(out)).astype(int)
    assert img.shape == (200, 150, 3)  # every second pixel
    hot = 0.45 * 200 + 0.55 * RAMP[-1]
    cold = 0.45 * 200 + 0.55 * RAMP[0]
    assert np.abs(img[10, 10] - hot).max() <= 1
    assert np.abs(img[10, 140] - cold).max() <= 1
    assert (img[150:] == 200).all()  # no patch: plain slide


def test_strided_read_keeps_no_band_alive(tmp_path):
    import tracemalloc

    from histoflow.merge.heatmap import strided

    values = np.random.default_rng(0).random((2000, 200, 3)).astype(np.float16)
    array = zarr.create_array(
        tmp_path / "a.zarr", shape=values.shape, chunks=(40, 200, 3), dtype="f2"
    )
    array[:] = values
    tracemalloc.start()
    got = strided(array, 10, 40, channel=1)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert np.array_equal(got, values[::10, ::10, 1])
    # Memory follows one band and the thumbnail, not the slide: views of each band
    # would keep every band (the whole array) alive until the end.
    assert peak < values.nbytes / 4, (peak, values.nbytes)
