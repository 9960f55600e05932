"""The benchmark mosaic: a pyramidal tiled TIFF OpenSlide reads with its resolution."""

import numpy as np
from histoflow.slide import open_slide
from histoflow.synthetic.mosaic import BACKGROUND_RGB, write_mosaic_tiff


def test_mosaic_is_a_pyramidal_slide_of_real_tissue(tmp_path, demo_slide):
    path = write_mosaic_tiff(
        tmp_path / "m.tif", demo_slide, size=3072, block=1024, seed=1, background=0.4
    )
    with open_slide(path) as s:
        assert s.format == "generic-tiff" and s.mpp == 0.5
        assert s.dimensions == (3072, 3072) and s.level_count >= 2
        thumb = s.thumbnail(4.0)
    glass = np.all(np.abs(thumb.astype(int) - BACKGROUND_RGB) < 6, axis=-1)
    assert 0.05 < glass.mean() < 0.95  # both glass blocks and tissue blocks
