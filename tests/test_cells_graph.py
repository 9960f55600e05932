"""The neighbourhood of nuclei (histoflow.cells.graph) on hand-made layouts."""

from __future__ import annotations

import math

import numpy as np
from histoflow.cells.graph import degree, delaunay_edges, graph_edges, neighbour_counts

# A kite: 0-1 is the shared side of two triangles (0, 1, 2) and (0, 1, 3); 2-3 is not
# an edge (it would cross 0-1).
KITE = np.array([[0.0, 0.0], [10.0, 0.0], [5.0, 8.0], [5.0, -8.0]])


def test_delaunay_of_a_kite():
    assert delaunay_edges(KITE).tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3]]


def test_delaunay_of_a_hexagon_around_a_centre():
    angles = np.arange(6) * math.pi / 3
    ring = np.stack([np.cos(angles), np.sin(angles)], axis=1) * 10
    points = np.vstack([[0.0, 0.0], ring])
    edges = {tuple(e) for e in delaunay_edges(points).tolist()}
    spokes = {(0, i) for i in range(1, 7)}
    rim = {tuple(sorted((i, i % 6 + 1))) for i in range(1, 7)}
    assert edges == spokes | rim


def test_degenerate_layouts():
    assert delaunay_edges(np.zeros((0, 2))).shape == (0, 2)
    assert delaunay_edges(np.array([[1.0, 1.0]])).shape == (0, 2)
    assert delaunay_edges(np.array([[0.0, 0.0], [3.0, 4.0]])).tolist() == [[0, 1]]
    # on one line: joined in order along it
    line = np.array([[0.0, 0.0], [20.0, 10.0], [10.0, 5.0], [30.0, 15.0]])
    assert delaunay_edges(line).tolist() == [[0, 2], [1, 2], [1, 3]]
    # identical centroids: no zero-length edge
    twice = np.vstack([KITE, KITE[:1]])
    edges = delaunay_edges(twice)
    lengths = np.linalg.norm(twice[edges[:, 0]] - twice[edges[:, 1]], axis=1)
    assert (lengths > 0).all() and len(edges) >= 5


def test_graph_edges_stay_within_a_task_and_have_lengths():
    points = np.vstack([KITE, KITE + np.array([1000.0, 0.0])])
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s, t, length = graph_edges(points, groups)
    assert len(s) == 10
    assert ((s < 4) == (t < 4)).all() and (s < t).all()
    np.testing.assert_allclose(length[(s == 0) & (t == 1)], [10.0])
    np.testing.assert_allclose(length[(s == 0) & (t == 2)], [math.hypot(5, 8)])
    assert degree(s, t, 8).tolist() == [3, 3, 2, 2] * 2
    # the longest edges dropped
    s2, _, length2 = graph_edges(points, groups, max_edge_um=9.5)
    assert len(s2) == 8 and (length2 <= 9.5).all()


def test_neighbour_counts_by_class_within_the_radius():
    # tumour cells at 0 and 10 µm, lymphocytes at 4, 30 and 10.5 µm along x
    points = np.array([[0.0, 0], [10.0, 0], [4.0, 0], [30.0, 0], [10.5, 0]])
    classes = np.array([0, 0, 1, 1, 1])
    groups = np.zeros(5, np.int64)
    counts = neighbour_counts(points, groups, classes, 2, radius_um=10.0)
    # [tumour, lymphocyte] neighbours within 10 µm (inclusive), itself not counted
    assert counts.tolist() == [[1, 1], [1, 2], [2, 1], [0, 0], [1, 1]]
    # another task's nuclei are not neighbours
    counts2 = neighbour_counts(points, np.array([0, 1, 0, 0, 0]), classes, 2, 10.0)
    assert counts2[1].tolist() == [0, 0] and counts2[0].tolist() == [0, 1]
