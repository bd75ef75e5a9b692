"""Pareto fronts and 2-D hypervolume on the quality–diversity plane (both maximised).

A point is ``(quality, diversity)``. Point ``p`` *dominates* ``q`` when ``p ≥ q`` in both
coordinates and ``p > q`` in at least one; ``p`` *weakly dominates* ``q`` when ``p ≥ q`` in both.
The Pareto front of a set is its non-dominated points.

Hypervolume w.r.t. a reference point ``r = (r_q, r_d)``: the area of the union of the rectangles
``[r_q, q_i] × [r_d, d_i]`` over the points (coordinates below ``r`` are clipped to ``r``, so such
points add nothing). With the front sorted by quality descending, ``q_1 > q_2 > …`` and so
``d_1 < d_2 < …``,

    HV = Σ_i (q_i − r_q) · (d_i − d_{i−1}),      d_0 = r_d.

Reference point (the choice matters, so every family is measured against the *same* one):
:func:`reference_point` takes the nadir of **all evaluated systems** — the minimum quality and the
minimum diversity over every system of every family — and moves it out by ``margin`` (default 5 %)
of each axis's range, so that the systems at the extremes (e.g. plain sampling, the most diverse
and least aligned one) still add area. Hypervolumes are therefore comparable within one evaluation
run only.

Comparing two fronts A and B (:func:`compare_fronts`):

- ``coverage(A, B)``: the fraction of B's points weakly dominated by some point of A
  (Zitzler's C-metric; C(A, B) = 1 means every point of B is matched or beaten by A);
- ``dominates``: ``C(A, B) = 1`` and ``C(B, A) < 1`` (A is better in the set sense);
- the hypervolumes of both and their difference.
"""

from __future__ import annotations

from typing import Iterable, Sequence

Point = tuple[float, float]


def dominates(p: Sequence[float], q: Sequence[float]) -> bool:
    """``p`` is at least as good as ``q`` in both coordinates and strictly better in one."""
    return p[0] >= q[0] and p[1] >= q[1] and (p[0] > q[0] or p[1] > q[1])


def weakly_dominates(p: Sequence[float], q: Sequence[float]) -> bool:
    return p[0] >= q[0] and p[1] >= q[1]


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the non-dominated points, ordered by quality ascending (diversity descending).
    Exact duplicates of a front point are all kept (neither dominates the other)."""
    idx = [i for i, p in enumerate(points)
           if not any(dominates(q, p) for j, q in enumerate(points) if j != i)]
    return sorted(idx, key=lambda i: (points[i][0], -points[i][1]))


def hypervolume(points: Iterable[Sequence[float]], ref: Sequence[float]) -> float:
    """Area dominated by ``points`` and bounded below by ``ref`` (both axes maximised)."""
    pts = [(float(q), float(d)) for q, d in points if q > ref[0] and d > ref[1]]
    if not pts:
        return 0.0
    front = [pts[i] for i in pareto_front(pts)]
    front = sorted(set(front), key=lambda p: -p[0])  # quality descending => diversity ascending
    area, prev_d = 0.0, float(ref[1])
    for q, d in front:
        area += (q - ref[0]) * (d - prev_d)
        prev_d = d
    return area


def reference_point(points: Iterable[Sequence[float]], margin: float = 0.05) -> Point:
    """The shared reference: per axis ``min − margin·(max − min)`` over all points (see module doc).
    A zero range moves the axis by ``margin`` in absolute terms so the area stays positive."""
    pts = [(float(q), float(d)) for q, d in points]
    if not pts:
        raise ValueError("reference_point needs at least one point")
    out = []
    for axis in (0, 1):
        lo, hi = min(p[axis] for p in pts), max(p[axis] for p in pts)
        span = hi - lo
        out.append(lo - margin * (span if span > 0 else 1.0))
    return out[0], out[1]


def coverage(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> float:
    """Fraction of ``b``'s points weakly dominated by at least one point of ``a`` (C-metric)."""
    if not b:
        return float("nan")
    return sum(any(weakly_dominates(p, q) for p in a) for q in b) / len(b)


def compare_fronts(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], ref: Sequence[float]) -> dict:
    """Coverage both ways, set dominance and hypervolumes of fronts ``a`` and ``b`` (of their points)."""
    fa = [a[i] for i in pareto_front(a)]
    fb = [b[i] for i in pareto_front(b)]
    c_ab, c_ba = coverage(fa, fb), coverage(fb, fa)
    hv_a, hv_b = hypervolume(fa, ref), hypervolume(fb, ref)
    return {"coverage_a_over_b": c_ab, "coverage_b_over_a": c_ba,
            "a_dominates_b": bool(c_ab == 1.0 and c_ba < 1.0),
            "b_dominates_a": bool(c_ba == 1.0 and c_ab < 1.0),
            "hypervolume_a": hv_a, "hypervolume_b": hv_b, "hypervolume_difference": hv_a - hv_b}
