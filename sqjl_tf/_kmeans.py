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
        shape: the shape of the tensor.
        nonzero_index: flat indices of its nonzeros, shape [m].
        nonzero: its nonzero values in index order, float32, shape [m].
    """

    values: np.ndarray
    cumsum: np.ndarray
    cumsum_sq: np.ndarray
    distinct: np.ndarray
    shape: tuple = ()
    nonzero_index: np.ndarray = None
    nonzero: np.ndarray = None

    @classmethod
    def from_array(cls, x: np.ndarray) -> "SortedValues":
        x = np.asarray(x)
        flat = x.ravel()
        nonzero_index = np.flatnonzero(flat)  # [m]
        nonzero = flat[nonzero_index].astype(np.float32, copy=False)  # [m]
        values = np.sort(nonzero).astype(np.float64)  # [m]
        cumsum = np.concatenate([[0.0], np.cumsum(values)])
        cumsum_sq = np.concatenate([[0.0], np.cumsum(values * values)])
        if values.size:
            keep = np.empty(values.size, dtype=bool)
            keep[0] = True
            np.not_equal(values[1:], values[:-1], out=keep[1:])
            distinct = values[keep]
        else:
            distinct = values
        return cls(values, cumsum, cumsum_sq, distinct, x.shape, nonzero_index, nonzero)

    def quantize(self, centres: np.ndarray):
        """The tensor with each nonzero replaced by its nearest centre.

        Zeros stay zero; a value halfway between two centres goes to the lower.

        Args:
            centres: the codebook, any order, shape [K] (0 included if reserved).

        Returns:
            (quantized float32 tensor of the original shape, number of distinct
            nonzero values in it).
        """
        out = np.zeros(int(np.prod(self.shape, dtype=np.int64)), dtype=np.float32)
        if centres.size == 0 or self.size == 0:
            return out.reshape(self.shape), 0
        c, nearest = nearest_centres(self.nonzero, centres)
        out[self.nonzero_index] = c[nearest]
        used = np.bincount(nearest, minlength=c.size) > 0
        levels = int(np.count_nonzero(used & (c.astype(np.float32) != 0)))
        return out.reshape(self.shape), levels

    @property
    def size(self) -> int:
        return int(self.values.size)


def nearest_centres(x: np.ndarray, centres) -> tuple:
    """Sorted centres (float64, [K]) and the index of each x's nearest one ([n]).

    A value halfway between two centres goes to the lower one.
    """
    c = np.sort(np.asarray(centres, dtype=np.float64))  # [K]
    mid = 0.5 * (c[1:] + c[:-1])  # [K - 1]
    return c, np.searchsorted(mid, np.asarray(x, dtype=np.float64), side="left")


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
    the per-layer prefix sums in the original scale. Each run stops by
    the reference's stopping rule (relative change of the distortion at most
    1e-3, then one more step, at most ``max_iter`` steps), so the linspace run
    reproduces the reference's result; the quantile run is kept where it is
    better.

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


def _lloyd_batched(layers, pending, reserve_zero, max_iter, results, tol=1e-3):
    """Lloyd's algorithm for every pending (layer, width), all runs advancing together.

    Each (layer, width) runs twice: from the reference's linspace start and
    from a quantile start (centre k at the (k + 1/2)/K quantile). Termination
    follows the reference exactly: a run whose distortion changed by at most
    ``tol`` (relative) takes one more step and stops there, and no run takes
    more than ``max_iter`` steps; so the linspace run reproduces the
    reference's iterates and result.

    Layout: layer l's sorted values v are laid at ``8 l + v / scale_l`` (inside
    (8l - 1, 8l + 1)) followed by a sentinel at ``8 l + 4``, so one binary search
    serves every run and the positions found index the concatenated prefix sums
    directly. Each run is a block of positions ``[pad, centres..., pad]``; its
    pads sit at ``8 l -/+ 5``, so the midpoints next to them fall just before
    the layer's first value and at its sentinel: the cluster boundaries of
    every run are the searched midpoints between consecutive positions, with no
    per-run fix-up.
    """
    used = sorted({l for l, _ in pending})  # layers with runs (so, with nonzeros)
    slot = {l: i for i, l in enumerate(used)}
    layers = [layers[l] for l in used]
    num_layers = len(layers)
    scale = np.array([1.01 * max(abs(sv.values[0]), abs(sv.values[-1])) for sv in layers])
    scale[scale == 0] = 1.0
    laid = np.concatenate(
        [np.concatenate([8.0 * l + sv.values / scale[l], [8.0 * l + 4.0]])
         for l, sv in enumerate(layers)]
    )  # [M + L], aligned with the concatenated prefix sums
    prefix = np.stack(
        [np.concatenate([sv.cumsum for sv in layers]),
         np.concatenate([sv.cumsum_sq for sv in layers])], axis=1
    )  # [M + L, 2]: sums of x and of x^2
    lows = np.array([sv.values[0] for sv in layers])
    highs = np.array([sv.values[-1] for sv in layers])
    sizes = np.array([sv.size for sv in layers])
    value_start = np.concatenate([[0], np.cumsum(sizes)])
    all_values = np.concatenate([sv.values for sv in layers])

    # Runs: (layer, width) x (linspace, quantile).
    owner = [(l, b) for l, b in pending for _ in range(2)]
    num_runs = len(owner)
    run_layer = np.array([slot[l] for l, _ in owner])  # [R], index into `layers`
    num_free = np.array([2**b for _, b in owner])  # [R]
    quantile = np.tile([False, True], len(pending))  # [R]
    zero = 1 if reserve_zero else 0
    block = num_free + zero + 2  # [R] pad, free centres, (zero), pad
    block_end = np.cumsum(block)
    block_start = block_end - block
    run = np.repeat(np.arange(num_runs), block)  # [N] owning run of each position
    k = np.arange(run.size) - block_start[run] - 1  # [N] index among the free centres
    layer = run_layer[run]  # [N]
    K = num_free[run]
    step = (highs[layer] - lows[layer]) / (K - 1)
    c = np.where(k == K - 1, highs[layer], lows[layer] + k * step)  # linspace, as NumPy's
    q_pos = value_start[layer] + ((np.clip(k, 0, None) + 0.5) / K * sizes[layer]).astype(np.int64)
    q_pos = np.minimum(q_pos, value_start[layer + 1] - 1)
    c = np.where(quantile[run], all_values[q_pos], c)
    pad = (k == -1) | (k == K + zero)
    c[k == -1] = -5.0 * scale[layer[k == -1]]
    c[k == K + zero] = 5.0 * scale[layer[k == K + zero]]
    movable = (k >= 0) & (k < K)
    if reserve_zero:
        c[k == K] = 0.0  # the fixed zero centre
    st = {
        "c": c,  # [N] centres in the original scale (pads included)
        "movable": movable,
        "run": run,
        "bin": np.where(pad, num_runs, run),  # pads' junk goes to an extra bin
        "offset": 8.0 * layer,
        "inv_scale": 1.0 / scale[layer],
    }
    run_stride = 8.0 * num_layers + 16.0

    def sort_runs(st):
        key = st["c"] * st["inv_scale"] + st["offset"] + run_stride * st["run"]
        order = np.argsort(key, kind="stable")
        st["c"], st["movable"] = st["c"][order], st["movable"][order]

    def record(st, runs, counts, dist):
        begin = np.searchsorted(st["run"], runs, side="left")  # runs are contiguous blocks
        end = np.searchsorted(st["run"], runs, side="right")
        for r, i, j in zip(runs, begin, end):
            l, b = owner[r]
            if b in results[l] and dist[r] >= results[l][b][1]:
                continue
            # Interior position p has counts[p - 1]. Centres are sorted, and
            # those with members are distinct.
            sel = st["movable"][i + 1 : j - 1] & (counts[i : j - 2] > 0)
            free = st["c"][i + 1 : j - 1][sel]
            if reserve_zero:
                free = free[free != 0.0]
            results[l][b] = (free.copy(), float(max(dist[r], 0.0)))

    sort_runs(st)
    num_movable = np.count_nonzero(st["movable"])
    prev = np.full(num_runs, np.nan)
    running = np.ones(num_runs, dtype=bool)  # not yet converged
    last_lap = np.zeros(num_runs, dtype=bool)  # converged: one more step, then stop
    for it in range(max_iter + 1):
        c = st["c"]
        laid_c = st["offset"] + c * st["inv_scale"]  # [N]
        edges = np.searchsorted(laid, 0.5 * (laid_c[:-1] + laid_c[1:]), side="right")  # [N-1]
        counts = edges[1:] - edges[:-1]  # [N-2], for positions 1..N-2
        at = prefix[edges]  # [N-1, 2]
        sums = at[1:] - at[:-1]  # [N-2, 2]
        inner = c[1:-1]
        err = sums[:, 1] - (2.0 * sums[:, 0] - counts * inner) * inner
        dist = np.bincount(st["bin"][1:-1], weights=err, minlength=num_runs + 1)[:num_runs]
        stop = last_lap if it < max_iter else (running | last_lap)
        if stop.any():
            stopped = np.flatnonzero(stop)
            record(st, stopped, counts, dist)
            running[stopped] = False
            last_lap[stopped] = False
            if not (running.any() or last_lap.any()):
                break
            keep = np.isin(st["run"], stopped, invert=True)
            st = {key: v[keep] for key, v in st.items()}
            c = st["c"]
            num_movable = np.count_nonzero(st["movable"])
            # Per-position views (N) of the interior arrays (N - 2), then filtered.
            counts = np.concatenate([[0], counts, [0]])[keep][1:-1]
            sums = np.concatenate([[[0.0, 0.0]], sums, [[0.0, 0.0]]])[keep][1:-1]
        # Lloyd never increases the distortion, so prev - dist is its change.
        converged = running & (prev - dist <= tol * prev)
        if converged.any():
            running &= ~converged
            last_lap |= converged
        prev = dist
        update = st["movable"][1:-1] & (counts > 0)
        np.divide(sums[:, 0], counts, out=c[1:-1], where=update)
        if np.count_nonzero(update) < num_movable:
            sort_runs(st)  # an empty cluster kept its centre: restore the order
