"""Pareto fronts, hypervolume and front comparison on hand-made points."""

import math

import pytest

from divcfg.pareto import (compare_fronts, coverage, dominates, hypervolume, pareto_front,
                           reference_point)


def test_front_excludes_dominated_points():
    pts = [(0.1, 0.9), (0.5, 0.5), (0.4, 0.4), (0.9, 0.1), (0.5, 0.2), (0.3, 0.95)]
    # (0.1, 0.9) is dominated by (0.3, 0.95), (0.4, 0.4) by (0.5, 0.5), and (0.5, 0.2) by (0.5, 0.5)
    # (equal quality, less diversity); the front is ordered by quality
    assert pareto_front(pts) == [5, 1, 3]
    assert pareto_front([(0.2, 0.2), (0.2, 0.2)]) == [0, 1]  # duplicates do not dominate each other
    assert dominates((0.5, 0.5), (0.5, 0.2)) and not dominates((0.5, 0.5), (0.5, 0.5))


def test_hypervolume_by_hand():
    ref = (0.0, 0.0)
    assert hypervolume([(1.0, 1.0)], ref) == pytest.approx(1.0)
    # staircase: rectangles [0,2]x[0,1] ∪ [0,1]x[0,2] = 2 + 2 - 1 = 3
    assert hypervolume([(2.0, 1.0), (1.0, 2.0)], ref) == pytest.approx(3.0)
    # a dominated point adds nothing, nor does a point below the reference
    assert hypervolume([(2.0, 1.0), (1.0, 2.0), (0.5, 0.5), (-1.0, 5.0)], ref) == pytest.approx(3.0)
    # reference shifts the area: [1,2]x[0.5,1] ∪ [1,1]x... = 0.5
    assert hypervolume([(2.0, 1.0), (1.0, 2.0)], (1.0, 0.5)) == pytest.approx(0.5)
    assert hypervolume([], ref) == 0.0


def test_reference_point_is_shared_nadir_with_margin():
    pts = [(0.2, 0.6), (0.6, 0.1), (0.4, 0.4)]
    assert reference_point(pts, margin=0.0) == (0.2, 0.1)
    q, d = reference_point(pts, margin=0.05)
    assert q == pytest.approx(0.2 - 0.05 * 0.4) and d == pytest.approx(0.1 - 0.05 * 0.5)


def test_compare_fronts():
    cfg = [(0.2, 0.6), (0.5, 0.3), (0.6, 0.1)]
    merge = [(0.3, 0.6), (0.55, 0.35), (0.6, 0.2)]
    ref = reference_point(cfg + merge, margin=0.0)
    assert coverage(merge, cfg) == 1.0 and coverage(cfg, merge) == 0.0
    c = compare_fronts(merge, cfg, ref)
    assert c["a_dominates_b"] and not c["b_dominates_a"]
    assert c["hypervolume_a"] > c["hypervolume_b"] > 0
    assert c["hypervolume_difference"] == pytest.approx(c["hypervolume_a"] - c["hypervolume_b"])
    # crossing fronts: neither dominates
    other = [(0.1, 0.9), (0.7, 0.05)]
    c = compare_fronts(other, cfg, reference_point(cfg + other, margin=0.0))
    assert not c["a_dominates_b"] and not c["b_dominates_a"]
    assert 0 < c["coverage_a_over_b"] < 1 or c["coverage_a_over_b"] == 0
    assert math.isnan(coverage(cfg, []))
