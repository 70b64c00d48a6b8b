"""1-D k-means with an optional fixed zero centre, on sorted values (NumPy).

In one dimension every k-means cluster is a contiguous run of the sorted values,
so a Lloyd iteration needs only the sorted values and the prefix sums of x and
x^2: cluster boundaries are midpoints between neighbouring centres (binary
search), means and squared errors come from prefix-sum differences. After one
sort, an iteration costs O(K log n) instead of the reference's O(n K).

Everything here is internal; the public entry points are in ``projections``.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass
class SortedValues:
    """Sorted nonzero values of one tensor and their prefix sums.

    Attributes:
        values: sorted nonzero values, float64, shape [m].
        cumsum: prefix sums of ``values`` with a leading 0, shape [m + 1].
        cumsum_sq: prefix sums of ``values**2`` with a leading 0, shape [m + 1].
        distinct: the distinct values, sorted, shape [d].
    """

    values: np.ndarray
    cumsum: np.ndarray
    cumsum_sq: np.ndarray
    distinct: np.ndarray

    @classmethod
    def from_array(cls, x: np.ndarray) -> "SortedValues":
        flat = np.asarray(x).ravel()
        nonzero = flat[flat != 0]
        values = np.sort(nonzero.astype(np.float32)).astype(np.float64)  # [m]
        cumsum = np.concatenate([[0.0], np.cumsum(values)])
        cumsum_sq = np.concatenate([[0.0], np.cumsum(values * values)])
        if values.size:
            keep = np.empty(values.size, dtype=bool)
            keep[0] = True
            np.not_equal(values[1:], values[:-1], out=keep[1:])
            distinct = values[keep]
        else:
            distinct = values
        return cls(values, cumsum, cumsum_sq, distinct)

    @property
    def size(self) -> int:
        return int(self.values.size)

    def segment_stats(self, edges: np.ndarray):
        """Counts, sums and sums of squares of the runs between ``edges``.

        Args:
            edges: non-decreasing indices into ``values``, shape [K + 1], with
                edges[0] = 0 and edges[-1] = m.

        Returns:
            (counts, sums, sums_sq), each shape [K].
        """
        counts = np.diff(edges)
        sums = np.diff(self.cumsum[edges])
        sums_sq = np.diff(self.cumsum_sq[edges])
        return counts, sums, sums_sq


def _initial_centres(sv: SortedValues, num_centres: int):
    """The reference's linspace start, and a quantile start."""
    lo, hi = sv.values[0], sv.values[-1]
    quantiles = ((np.arange(num_centres) + 0.5) / num_centres * sv.size).astype(np.int64)
    return [np.linspace(lo, hi, num_centres), sv.values[quantiles]]


def kmeans_widths(
    layers: Sequence[SortedValues],
    widths,
    reserve_zero: bool = True,
    max_iter: int = 100,
    needed=None,
):
    """1-D k-means of every layer for several codebook sizes, all at once.

    Every run (each layer, each width, from the reference's linspace start and
    from a quantile start) advances together: one Lloyd iteration of all of
    them is a handful of vectorised NumPy calls on flat arrays (the layers'
    sorted values are laid side by side, each mapped into its own interval, so
    a single binary search serves all runs). Distortions and means come from
    the per-layer prefix sums in the original scale. Each run stops at its
    fixed point or after ``max_iter`` iterations (the reference's cap), and
    since Lloyd never increases the distortion the linspace run alone is never
    worse than the reference; the quantile run is kept where it is better.

    Args:
        layers: the sorted nonzero values of each layer.
        widths: bit widths b; run b has 2^b free centres.
        reserve_zero: whether 0 is an extra centre that never moves.
        max_iter: iteration cap.
        needed: optional [L, len(widths)] booleans; where False the run is
            skipped and reported as (no centres, inf) (e.g. a width that
            cannot fit the budget).

    Returns:
        ``result[l][j] = (free_centres, distortion)`` for layer l and width
        ``widths[j]``: sorted float64 centres (at most 2^b, none equal to 0
        when ``reserve_zero``) and the squared error over the nonzero values.
    """
    widths = [int(b) for b in widths]
    results = [dict() for _ in layers]
    pending = []
    for l, sv in enumerate(layers):
        for j, b in enumerate(widths):
            if needed is not None and not needed[l][j]:
                results[l][b] = (np.zeros([0]), float("inf"))
            elif sv.distinct.size <= 2**b:  # exact: every distinct value is a centre
                results[l][b] = (sv.distinct.copy(), 0.0)
            else:
                pending.append((l, b))
    if pending:
        _lloyd_batched(layers, pending, reserve_zero, max_iter, results)
    return [[results[l][b] for b in widths] for l in range(len(layers))]


def _lloyd_batched(layers, pending, reserve_zero, max_iter, results, tol=1e-4):
    # Laid-out values: layer l's values v map to 4 l + v / scale_l, in (4l-1, 4l+1).
    scale = np.array(
        [max(abs(sv.values[0]), abs(sv.values[-1])) if sv.size else 1.0 for sv in layers]
    )
    sizes = np.array([sv.size for sv in layers])
    start = np.concatenate([[0], np.cumsum(sizes)])  # layer l's values: [start_l, start_l+1)
    laid = np.concatenate([4.0 * l + sv.values / scale[l] for l, sv in enumerate(layers)])
    cumsum = np.concatenate([sv.cumsum for sv in layers])  # layer l at offset start_l + l
    cumsum_sq = np.concatenate([sv.cumsum_sq for sv in layers])

    starts, owner = [], []
    for l, b in pending:
        for init in _initial_centres(layers[l], 2**b):
            starts.append(np.concatenate([init, [0.0]]) if reserve_zero else init)
            owner.append((l, b))
    run_sizes = np.array([c.size for c in starts])
    run_id = np.repeat(np.arange(len(starts)), run_sizes)  # [T]
    run_layer = np.array([l for l, _ in owner])[run_id]  # [T]
    fixed = np.zeros(run_id.size, dtype=bool)
    if reserve_zero:
        fixed[np.cumsum(run_sizes) - 1] = True
    # Per-centre state; rows of finished runs are dropped as the runs converge.
    st = {
        "centres": np.concatenate(starts),  # original scale
        "fixed": fixed,
        "run": run_id,
        "inv_scale": 1.0 / scale[run_layer],
        "layer_offset": 4.0 * run_layer,
        "lo_base": start[run_layer],
        "hi_base": start[run_layer + 1],
        "shift": run_layer,  # index shift into the concatenated prefix sums
        "sort_key": 4.0 * run_id,  # keeps runs apart when sorting centres
    }
    prev_dist = np.full(len(starts), np.inf)
    finished = np.zeros(len(starts), dtype=bool)

    def layout(st):
        """Run boundaries in the flat arrays (they change only when runs drop)."""
        run = st["run"]
        first = np.flatnonzero(np.concatenate([[True], run[1:] != run[:-1]]))
        last = np.concatenate([first[1:] - 1, [run.size - 1]])
        return first, st["lo_base"][first], last, st["hi_base"][last]

    def assign(st, bounds):
        first, lo_first, last, hi_last = bounds
        key = st["sort_key"] + st["centres"] * st["inv_scale"]
        if np.any(key[1:] < key[:-1]):  # Lloyd keeps centres sorted, almost always
            order = np.argsort(key, kind="stable")
            st["centres"], st["fixed"] = st["centres"][order], st["fixed"][order]
        c = st["centres"]
        mid = st["layer_offset"][:-1] + 0.5 * (c[1:] + c[:-1]) * st["inv_scale"][:-1]
        split = np.searchsorted(laid, mid, side="right")
        lo = np.empty(c.size, dtype=np.int64)
        lo[1:] = split
        lo[first] = lo_first
        hi = np.empty(c.size, dtype=np.int64)
        hi[:-1] = split
        hi[last] = hi_last
        lo += st["shift"]
        hi += st["shift"]
        counts = hi - lo
        sums = cumsum[hi] - cumsum[lo]
        err = cumsum_sq[hi] - cumsum_sq[lo] - (2.0 * sums - counts * c) * c
        dist = np.maximum(np.bincount(st["run"], weights=err, minlength=len(starts)), 0.0)
        return counts, sums, dist

    def record(st, runs, counts, dist):
        for r in runs:
            l, b = owner[r]
            sel = (st["run"] == r) & ~st["fixed"] & (counts > 0)
            free = np.unique(st["centres"][sel])
            if reserve_zero:
                free = free[free != 0.0]
            if b not in results[l] or dist[r] < results[l][b][1]:
                results[l][b] = (free, float(dist[r]))

    bounds = layout(st)
    for it in range(max_iter + 1):
        counts, sums, dist = assign(st, bounds)
        active = np.flatnonzero(~finished)
        done = np.abs(prev_dist[active] - dist[active]) <= tol * np.maximum(dist[active], 1e-300)
        done |= dist[active] == prev_dist[active]
        if it == max_iter:
            done[:] = True
        newly = active[done]
        if newly.size:
            record(st, newly, counts, dist)
            finished[newly] = True
            if finished.all():
                break
            keep = ~finished[st["run"]]
            st = {k: v[keep] for k, v in st.items()}
            bounds = layout(st)
            counts, sums = counts[keep], sums[keep]
        prev_dist = dist
        moved = np.where(counts > 0, sums / np.maximum(counts, 1), st["centres"])
        moved[st["fixed"]] = 0.0
        st["centres"] = moved


