"""HoVer-Net's published post-processing on synthetic HoVer maps with a known truth.

Scenes of ellipses (semi-axes 7-16 px, the size of nuclei at 0.25-0.5 um/px) with exact
hv maps, built as HoVer-Net's training targets are (x and y offsets from each nucleus's
centre of mass, negative and positive sides scaled to [-1, 0] and [0, 1] separately), and
touching pairs split where their ellipses meet. Also the OpenCV-equivalent pieces (Sobel
kernels, 3x3 Gaussian, 5x5 ellipse) and the type vote.
"""

from __future__ import annotations

import numpy as np
import pytest
from histoflow.instances.hovernet_published import (
    HoverParams,
    ellipse,
    gaussian3,
    hovernet_instances,
    hovernet_labels,
    minmax,
    sobel,
    sobel_kernels,
    vote_types,
)
from scipy import ndimage as ndi
from skimage.segmentation import watershed

CELL = 64  # one isolated nucleus or one touching pair per CELL x CELL block


def ellipse_distance(shape, cy, cx, a, b, theta):
    """(u/a)^2 + (v/b)^2 of every pixel for an ellipse rotated by theta: <= 1 inside."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    return (u / a) ** 2 + (v / b) ** 2


def hv_targets(labels):
    """HoVer-Net's hv training targets of a label image (H, W, 2): x then y."""
    hv = np.zeros((*labels.shape, 2), np.float32)
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        ys, xs = np.nonzero(labels[sl] == i)
        for channel, offset in ((0, xs - np.round(xs.mean())), (1, ys - np.round(ys.mean()))):
            offset = offset.astype(np.float64)
            neg, pos = offset < 0, offset > 0
            if neg.any():
                offset[neg] /= -offset[neg].min()
            if pos.any():
                offset[pos] /= offset[pos].max()
            hv[ys + sl[0].start, xs + sl[1].start, channel] = offset
    return hv


def place(dists, labels, first_id):
    """Paint the ellipses of one block: each pixel goes to the ellipse it is deepest in."""
    stack = np.stack(dists)
    inside = stack.min(axis=0) <= 1.0
    labels[inside] = first_id + stack.argmin(axis=0)[inside]


def scene(rng, blocks=(4, 4), pair_share=0.5):
    """(truth labels, np probability, hv map) for a grid of blocks."""
    shape = (blocks[0] * CELL, blocks[1] * CELL)
    labels = np.zeros(shape, np.int32)
    next_id = 1
    for by in range(blocks[0]):
        for bx in range(blocks[1]):
            cy, cx = (by + 0.5) * CELL + rng.uniform(-3, 3), (bx + 0.5) * CELL + rng.uniform(-3, 3)
            theta = rng.uniform(0, np.pi)
            if rng.random() < pair_share:
                axes = [(rng.uniform(8, 13), rng.uniform(7, 10)) for _ in range(2)]
                sep = (axes[0][0] + axes[1][0]) * rng.uniform(0.75, 0.9) / 2
                offs = [
                    (-sep * np.sin(theta), -sep * np.cos(theta)),
                    (sep * np.sin(theta), sep * np.cos(theta)),
                ]
                dists = [
                    ellipse_distance(shape, cy + oy, cx + ox, a, b, theta)
                    for (oy, ox), (a, b) in zip(offs, axes)
                ]
            else:
                a, b = rng.uniform(9, 16), rng.uniform(7, 12)
                dists = [ellipse_distance(shape, cy, cx, a, b, theta)]
            place(dists, labels, next_id)
            next_id += len(dists)
    prob = np.where(labels > 0, 0.95, 0.05).astype(np.float32)
    return labels, prob, hv_targets(labels)


def f1_at_iou(truth, pred, iou=0.5):
    """Detection F1 with matches at IoU > iou (one-to-one for iou >= 0.5)."""
    nt, npred = int(truth.max()), int(pred.max())
    inter = np.bincount(
        truth.ravel() * (npred + 1) + pred.ravel(), minlength=(nt + 1) * (npred + 1)
    )
    inter = inter.reshape(nt + 1, npred + 1)[1:, 1:]
    at = np.bincount(truth.ravel(), minlength=nt + 1)[1:]
    ap = np.bincount(pred.ravel(), minlength=npred + 1)[1:]
    union = at[:, None] + ap[None, :] - inter
    tp = int(((inter / np.maximum(union, 1)) > iou).sum())
    return 2 * tp / (nt + npred) if nt + npred else 1.0


@pytest.mark.parametrize(("seed", "pair_share"), [(0, 0.5), (1, 1.0), (2, 0.0)])
def test_synthetic_scene_f1(seed, pair_share):
    truth, prob, hv = scene(np.random.default_rng(seed), blocks=(6, 6), pair_share=pair_share)
    # the pairs do touch: one foreground component per block
    assert ndi.label(truth > 0)[1] == 36
    labels = hovernet_labels(prob, hv)
    assert labels.dtype == np.int32 and labels.shape == truth.shape
    assert set(np.unique(labels)) == set(range(int(labels.max()) + 1))
    f1 = f1_at_iou(truth, labels)
    print(f"seed {seed}: {truth.max()} nuclei, {labels.max()} found, F1 {f1:.4f}")
    assert f1 >= 0.99
    two_channel = np.stack([1 - prob, prob], axis=-1)  # the np head's softmax
    assert np.array_equal(hovernet_labels(two_channel, hv), labels)


def test_types_by_majority_vote():
    truth, prob, hv = scene(np.random.default_rng(3), blocks=(3, 3))
    rng = np.random.default_rng(4)
    n = int(truth.max())
    true_type = rng.integers(1, 4, n + 1)
    true_type[0] = 0
    type_map = true_type[truth]
    # 30% of each nucleus's pixels vote background, 10% another type: the true type wins
    noise = rng.random(truth.shape)
    type_map = np.where(noise < 0.3, 0, type_map)
    type_map = np.where((noise >= 0.3) & (noise < 0.4), (type_map % 3) + 1, type_map)
    logits = np.eye(4, dtype=np.float32)[type_map] + rng.normal(0, 0.01, (*truth.shape, 4))
    result = hovernet_instances(prob, hv, logits.astype(np.float32))
    assert result.count == n
    # each predicted instance's type is the type of the truth nucleus it overlaps most
    for i in range(1, n + 1):
        overlap = np.bincount(truth[result.labels == i], minlength=n + 1)
        assert result.types[i - 1] == true_type[overlap[1:].argmax() + 1]
    assert result.types.dtype == np.int32
    assert np.all((result.type_prob > 0.45) & (result.type_prob < 0.75))


def test_vote_rules():
    labels = np.zeros((4, 10), np.int32)
    labels[0, :5], labels[1, :5], labels[2, :4] = 1, 2, 3
    types = np.zeros((4, 10), np.int64)
    types[0, :5] = [0, 0, 0, 2, 2]  # background majority: the runner-up type wins
    types[1, :5] = [0, 0, 0, 0, 0]  # nothing else voted: background
    types[2, :4] = [3, 3, 1, 1]  # a tie goes to the smaller type
    got, prob = vote_types(labels, types)
    assert got.tolist() == [2, 0, 1]
    np.testing.assert_allclose(prob, [0.4, 1.0, 0.5], atol=1e-5)


def test_empty_and_small_objects():
    prob = np.zeros((64, 64), np.float32)
    hv = np.zeros((64, 64, 2), np.float32)
    empty = hovernet_instances(prob, hv, np.zeros((64, 64, 3), np.float32))
    assert empty.count == 0 and empty.labels.dtype == np.int32 and len(empty.types) == 0
    prob[10:13, 10:13] = 1.0  # 9 px: below the published 10-px blob size
    assert hovernet_labels(prob, hv).max() == 0


def test_opencv_equivalents():
    deriv, smooth = sobel_kernels(5)
    assert deriv.tolist() == [-1, -2, 0, 2, 1] and smooth.tolist() == [1, 4, 6, 4, 1]
    deriv, smooth = sobel_kernels(3)
    assert deriv.tolist() == [-1, 0, 1] and smooth.tolist() == [1, 2, 1]
    deriv, smooth = sobel_kernels(21)
    assert deriv.sum() == 0 and np.array_equal(deriv, -deriv[::-1]) and smooth.sum() == 2**20
    ramp = np.tile(np.arange(64.0), (64, 1))  # increases along x
    dx, dy = sobel(ramp, axis=1, ksize=21), sobel(ramp.T, axis=0, ksize=21)
    inner = (slice(10, -10), slice(10, -10))
    assert np.allclose(dx[inner], dx[inner].flat[0]) and dx[inner].flat[0] > 0
    assert np.allclose(dy, dx.T)
    assert ellipse(5).astype(int).tolist() == [
        [0, 0, 1, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [0, 0, 1, 0, 0],
    ]
    impulse = np.zeros((5, 5))
    impulse[2, 2] = 1.0
    assert np.allclose(gaussian3(impulse)[1:4, 1:4], np.outer([1, 2, 1], [1, 2, 1]) / 16)
    assert not minmax(np.full((3, 3), 7.0)).any()
    assert minmax(np.array([2.0, 4.0, 3.0])).tolist() == [0.0, 1.0, 0.5]
    assert HoverParams.scaled(0.5) == HoverParams(ksize=11, min_marker_size=3)


def test_blurred_noisy_maps_f1():
    # network-like maps: hv blurred (sigma 1.5 px) plus noise, np blurred plus noise
    truth, prob, hv = scene(np.random.default_rng(5), blocks=(6, 6))
    rng = np.random.default_rng(6)
    hv = ndi.gaussian_filter(hv, (1.5, 1.5, 0)) + rng.normal(0, 0.1, hv.shape)
    prob = np.clip(ndi.gaussian_filter(prob, 1.5) + rng.normal(0, 0.1, prob.shape), 0, 1)
    labels = hovernet_labels(prob.astype(np.float32), hv.astype(np.float32))
    assert f1_at_iou(truth, labels) >= 0.99


def opencv_published(cv2, np_map, hv_map):
    """TIAToolbox 2.1.3's HoVer-Net post-processing written with OpenCV, as it runs it."""

    def drop_small(lab, size):
        small = np.bincount(lab.ravel()) < size
        small[0] = False
        return np.where(small[lab], 0, lab)

    def norm(a):
        return cv2.normalize(a, None, alpha=0, beta=1, norm_type=cv2.NORM_MINMAX, dtype=cv2.CV_32F)

    blb = (drop_small(ndi.label(np_map >= 0.5)[0], 10) > 0).astype(np.int32)
    sob_h = 1 - norm(cv2.Sobel(norm(hv_map[..., 0]), cv2.CV_64F, 1, 0, ksize=21))
    sob_v = 1 - norm(cv2.Sobel(norm(hv_map[..., 1]), cv2.CV_64F, 0, 1, ksize=21))
    energy = np.clip(np.maximum(sob_h, sob_v) - (1 - blb), 0, None)
    dist = -cv2.GaussianBlur((1.0 - energy) * blb, (3, 3), 0)
    marker = np.clip(blb - (energy >= 0.4).astype(np.int32), 0, None)
    marker = ndi.binary_fill_holes(marker).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    marker = cv2.morphologyEx(marker, cv2.MORPH_OPEN, kernel)
    marker = drop_small(ndi.label(marker)[0], 10)
    return watershed(dist, markers=marker, mask=blb)


def same_partition(a, b):
    """Equal label images up to renumbering."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = set(zip(a[a > 0].tolist(), b[b > 0].tolist()))
    return len(pairs) == len(np.unique(a[a > 0])) == len(np.unique(b[b > 0]))


def test_equals_opencv_pipeline():
    # Only where OpenCV is installed (histoflow does not depend on it): the numpy/scipy
    # pipeline gives the same partition as the OpenCV one, on exact, noisy and random maps.
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(7)
    _, prob, hv = scene(rng, blocks=(4, 4))
    noisy_hv = ndi.gaussian_filter(hv, (1.5, 1.5, 0)) + rng.normal(0, 0.1, hv.shape)
    random_p = ndi.gaussian_filter(rng.random((164, 164)), 4)
    random_p = (random_p - random_p.min()) / np.ptp(random_p)
    random_hv = ndi.gaussian_filter(rng.normal(size=(164, 164, 2)), (3, 3, 0))
    for p, h in ((prob, hv), (prob, noisy_hv), (random_p, random_hv)):
        p, h = p.astype(np.float32), h.astype(np.float32)
        assert same_partition(opencv_published(cv2, p, h), hovernet_labels(p, h))
    image = rng.random((50, 70)).astype(np.float32)
    for k in (3, 5, 21):
        for axis, (dx, dy) in ((1, (1, 0)), (0, (0, 1))):
            ref = cv2.Sobel(image, cv2.CV_64F, dx, dy, ksize=k)
            np.testing.assert_allclose(
                sobel(image, axis, k), ref, rtol=0, atol=1e-9 * np.abs(ref).max()
            )
    np.testing.assert_allclose(gaussian3(image), cv2.GaussianBlur(image, (3, 3), 0), atol=1e-6)
    for size in (3, 5, 7, 9):
        assert np.array_equal(
            ellipse(size), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)) > 0
        )
