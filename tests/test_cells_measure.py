"""Per-nucleus measurements (histoflow.cells.measure): the rasteriser gives back the
label pixels, shapes match analytic ellipses and scikit-image's regionprops, and stain
intensities match a synthetic image whose stain densities are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from histoflow import stains
from histoflow.cells.measure import (
    MEASUREMENT_COLUMNS,
    intensity_measurements,
    rasterise,
    shape_measurements,
)
from histoflow.synthetic.cells import ellipse_labels, label_objects, stain_image
from scipy import ndimage
from skimage.measure import regionprops


def polygons_of(labels: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Model-pixel polygons of the labels, as extract_instances outlines them."""
    objs = label_objects(labels, scale)
    return shapely.transform(shapely.from_wkb(objs.contour), lambda c: c / scale)


def random_blobs(seed: int = 0, size: int = 240) -> np.ndarray:
    """Irregular, hole-free, 4-connected blobs (some concave, some touching)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((size, size), np.int32)
    k = 0
    for cy in range(14, size - 14, 26):
        for cx in range(14, size - 14, 26):
            ry, rx = rng.uniform(1.5, 12, 2)
            ell = ellipse_labels((size, size), [(cy, cx, ry, rx, rng.uniform(0, math.pi))]) > 0
            rough = ellipse_labels((size, size), [(cy, cx, ry * 1.3, rx * 1.3, 0.3)]) > 0
            blob = ell | (rough & (rng.random((size, size)) < 0.35))
            lab, n = ndimage.label(blob)
            if n == 0:
                continue
            biggest = np.argmax(np.bincount(lab.ravel())[1:]) + 1
            blob = ndimage.binary_fill_holes(lab == biggest)
            k += 1
            labels[blob & (labels == 0)] = k
    # relabel 1..n without gaps (later blobs may have lost every pixel)
    ids = np.unique(labels[labels > 0])
    lut = np.zeros(labels.max() + 1, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1)
    return lut[labels]


def test_rasterise_gives_back_the_label_pixels():
    labels = random_blobs(1)
    pixels = rasterise(polygons_of(labels))
    image = np.zeros_like(labels)
    image[pixels.y, pixels.x] = pixels.obj + 1
    assert np.array_equal(image, labels)
    # grouped by object, rows then columns in order
    order = np.lexsort((pixels.x, pixels.y, pixels.obj))
    assert np.array_equal(order, np.arange(len(order)))


def test_rasterise_holes_multipolygons_and_missing():
    square = shapely.box(0, 0, 10, 10, ccw=False)
    holed = shapely.Polygon(square.exterior.coords, [shapely.box(3, 3, 7, 7).exterior.coords])
    two = shapely.MultiPolygon([shapely.box(0, 0, 2, 2), shapely.box(5, 5, 7, 6)])
    pixels = rasterise(np.array([holed, None, two, shapely.Polygon()], dtype=object))
    assert pixels.counts.tolist() == [100 - 16, 0, 4 + 2, 0]


def test_shapes_equal_regionprops():
    labels = random_blobs(2)
    polys = polygons_of(labels)
    values = shape_measurements(rasterise(polys), polys, mpp=1.0)
    props = regionprops(labels)
    assert len(props) == len(polys) > 40
    for p in props:
        i = p.label - 1
        expected = {
            "area_um2": p.area,
            "perimeter_um": p.perimeter,
            "equivalent_diameter_um": p.equivalent_diameter_area,
            "major_axis_um": p.axis_major_length,
            "minor_axis_um": p.axis_minor_length,
            "eccentricity": p.eccentricity,
            "extent": p.extent,
        }
        for key, value in expected.items():
            assert values[key][i] == pytest.approx(value, rel=1e-9, abs=1e-9), (key, p.label)
        if p.eccentricity > 0.2:
            # regionprops: angle from the row axis, counter-clockwise; ours: from x, to +y
            ours = math.radians(values["orientation_deg"][i])
            theirs = (-math.sin(p.orientation), -math.cos(p.orientation))
            assert abs(math.cos(ours) * theirs[0] + math.sin(ours) * theirs[1]) > 0.9999


@pytest.mark.parametrize("mpp", [0.5, 0.25])
def test_shapes_of_ellipses_within_two_percent_of_analytic(mpp):
    rng = np.random.default_rng(3)
    ellipses = []
    for cy in range(40, 400, 80):
        for cx in range(40, 400, 80):
            # semi-axes in model px; nearly round ones make eccentricity ill-conditioned
            ry = rng.uniform(16, 32)
            rx = ry * rng.uniform(0.35, 0.75)
            ellipses.append((cy, cx, ry, rx, rng.uniform(0, math.pi)))
    labels = ellipse_labels((400, 400), ellipses)
    polys = polygons_of(labels)
    v = shape_measurements(rasterise(polys), polys, mpp)
    for i, (_, _, ry, rx, angle) in enumerate(ellipses):
        a, b = ry * mpp, rx * mpp
        assert v["area_um2"][i] == pytest.approx(math.pi * a * b, rel=0.02)
        assert v["major_axis_um"][i] == pytest.approx(2 * a, rel=0.02)
        assert v["minor_axis_um"][i] == pytest.approx(2 * b, rel=0.02)
        assert v["eccentricity"][i] == pytest.approx(math.sqrt(1 - (b / a) ** 2), rel=0.02)
        assert v["equivalent_diameter_um"][i] == pytest.approx(2 * math.sqrt(a * b), rel=0.02)
        h = ((a - b) / (a + b)) ** 2
        ramanujan = math.pi * (a + b) * (1 + 3 * h / (10 + math.sqrt(4 - 3 * h)))
        assert v["perimeter_um"][i] == pytest.approx(ramanujan, rel=0.06)
        # the major axis lies along `angle` from the y axis: (sin, cos) in (x, y)
        ours = math.radians(v["orientation_deg"][i])
        assert abs(math.cos(ours) * math.sin(angle) + math.sin(ours) * math.cos(angle)) > 0.999
        assert -90 < v["orientation_deg"][i] <= 90
        assert 0.97 < v["solidity"][i] <= 1.0
        circularity = 4 * math.pi * math.pi * a * b / ramanujan**2
        assert v["circularity"][i] == pytest.approx(circularity, rel=0.1)
        half_h = math.hypot(ry * math.cos(angle), rx * math.sin(angle))
        half_w = math.hypot(ry * math.sin(angle), rx * math.cos(angle))
        extent = math.pi * ry * rx / (4 * half_h * half_w)
        assert v["extent"][i] == pytest.approx(extent, rel=0.08)


def test_undefined_values_are_nan():
    one_px = shapely.box(3, 3, 4, 4)
    polys = np.array([one_px, shapely.box(0.6, 0.6, 0.9, 0.9), None], dtype=object)
    pixels = rasterise(polys)
    v = shape_measurements(pixels, polys, 0.5)
    assert v["area_um2"].tolist() == [0.25, 0.0, 0.0]
    assert v["perimeter_um"][0] == 0 and math.isnan(v["circularity"][0])
    for key in ("perimeter_um", "major_axis_um", "eccentricity", "extent"):
        assert np.isnan(v[key][1:]).all()
    rgb = np.full((len(pixels.y), 3), 128, np.uint8)
    i = intensity_measurements(pixels, rgb)
    assert i["red_mean"][0] == 128 and np.isnan(i["red_mean"][1:]).all()
    assert i["hematoxylin_od_std"][0] == 0


@pytest.mark.parametrize("vectors", [None, [[0.5626, 0.7201, 0.4062], [0.2159, 0.8012, 0.5581]]])
def test_stain_densities_of_a_known_image(vectors):
    rng = np.random.default_rng(4)
    ellipses = [(cy, cx, 9, 6, 0.4) for cy in range(15, 150, 30) for cx in range(15, 150, 30)]
    labels = ellipse_labels((150, 150), ellipses)
    n = labels.max()
    h, e = rng.uniform(0.2, 0.9, n), rng.uniform(0.05, 0.4, n)
    matrix = stains.stain_matrix(vectors)
    image = stain_image(labels, h, e, matrix=matrix)
    pixels = rasterise(polygons_of(labels))
    v = intensity_measurements(pixels, image[pixels.y, pixels.x], matrix)
    # uint8 rounding: a step of 1 in 255 is at most ~0.02 OD for dark pixels
    np.testing.assert_allclose(v["hematoxylin_od_mean"], h, atol=0.01)
    np.testing.assert_allclose(v["eosin_od_mean"], e, atol=0.01)
    assert (v["hematoxylin_od_std"] < 0.01).all()
    assert (v["hematoxylin_od_min"] <= v["hematoxylin_od_mean"] + 1e-12).all()
    assert (v["hematoxylin_od_max"] >= v["hematoxylin_od_mean"] - 1e-12).all()
    expected_red = 255 * 10 ** -(h * matrix[0, 0] + e * matrix[1, 0])
    np.testing.assert_allclose(v["red_mean"], expected_red, atol=0.6)


def test_stain_matrix_checks_and_orthogonal_residual():
    m = stains.stain_matrix([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]])
    assert abs(m[2] @ m[0]) < 1e-12 and abs(m[2] @ m[1]) < 1e-12
    np.testing.assert_allclose(np.linalg.norm(m, axis=1), 1)
    with pytest.raises(ValueError):
        stains.stain_matrix([[1, 0, 0], [2, 0, 0]])
    with pytest.raises(ValueError):
        stains.stain_matrix([[1, 0, 0]])
    # pure haematoxylin at density d reads back as H = d, E = 0
    rgb = 255 * 10 ** -(0.8 * stains.stain_matrix()[0])
    hed = stains.deconvolve(rgb)
    assert hed[0] == pytest.approx(0.8) and abs(hed[1]) < 1e-9


def test_every_column_is_measured():
    labels = random_blobs(5, 120)
    polys = polygons_of(labels)
    pixels = rasterise(polys)
    rgb = np.full((len(pixels.y), 3), 200, np.uint8)
    out = shape_measurements(pixels, polys, 0.5) | intensity_measurements(pixels, rgb)
    assert set(out) == set(MEASUREMENT_COLUMNS)
    assert all(np.isfinite(out[k]).all() for k in MEASUREMENT_COLUMNS if k != "circularity")
