"""A NumPy re-implementation of the reference (PyTorch) projections, for benchmarks.

It follows the reference algorithm step by step, not sqjl_tf's: Lloyd's k-means
from a linspace start with an O(n x 2^b) assignment per iteration (100
iterations at most, relative tolerance 1e-3 on the distortion), the greedy
multiple-choice knapsack for the bit widths, and a full sort for the sparse
projection. Only the benchmarks import it.
"""

from __future__ import annotations

import numpy as np

from sqjl_tf import _knapsack


def sparse_projection(weights, bits, budget):
    """Global ranking by w^2/b_l with a full sort; longest prefix that fits."""
    scores = np.concatenate([(w.ravel() ** 2) / b for w, b in zip(weights, bits)])
    costs = np.concatenate([np.full(w.size, float(b)) for w, b in zip(weights, bits)])
    costs[scores == 0] = 0.0
    order = np.argsort(-scores, kind="stable")
    keep_sorted = np.cumsum(costs[order]) <= budget
    keep = np.zeros(scores.size, dtype=bool)
    keep[order[keep_sorted]] = True
    keep &= scores > 0
    out, start = [], 0
    for w in weights:
        out.append(np.where(keep[start : start + w.size].reshape(w.shape), w, 0).astype(w.dtype))
        start += w.size
    return out, [int(np.count_nonzero(o)) for o in out]


def kmeans(x, bits, max_iter=100, tol=1e-3):
    """Lloyd's k-means on the nonzeros of x with a fixed zero centre.

    Returns (free_centres, distortion over the nonzeros).
    """
    v = x[x != 0].astype(np.float64)
    if v.size == 0:
        return np.zeros(0), 0.0
    free = np.linspace(v.min(), v.max(), 2**bits)
    prev = None
    for _ in range(max_iter):
        centres = np.concatenate([free, [0.0]])
        dist2 = (v[:, None] - centres[None, :]) ** 2  # [n, K+1]
        assign = np.argmin(dist2, axis=1)
        dist = float(dist2[np.arange(v.size), assign].sum())
        counts = np.bincount(assign, minlength=centres.size)[:-1]
        sums = np.bincount(assign, weights=v, minlength=centres.size)[:-1]
        free = np.where(counts > 0, sums / np.maximum(counts, 1), free)
        if prev is not None and abs(prev - dist) <= tol * max(prev, 1e-30):
            break
        prev = dist
    centres = np.concatenate([free, [0.0]])
    dist = float(((v[:, None] - centres[None, :]) ** 2).min(1).sum())
    return free, dist


def quantization_projection(weights, nnz, budget, min_bits=1, max_bits=8):
    """Codebooks for every width, then the greedy bit allocation."""
    widths = list(range(min_bits, max_bits + 1))
    books, dists = [], []
    for w in weights:
        row = [kmeans(w, b) for b in widths]
        books.append([c for c, _ in row])
        dists.append([d for _, d in row])
    costs = np.array([[b * n for b in widths] for n in nnz], dtype=np.float64)
    choice = _knapsack.allocate_greedy(costs, np.array(dists), budget)
    out, bits = [], []
    for w, row, j in zip(weights, books, choice):
        centres = np.concatenate([row[j], [0.0]])
        q = centres[np.argmin((w.reshape(-1, 1) - centres[None, :]) ** 2, axis=1)]
        q = np.where(w.ravel() == 0, 0.0, q).reshape(w.shape).astype(np.float32)
        out.append(q)
        bits.append(widths[j])
    return out, bits


def kmeans_prefix_sums(x, bits, max_iter=100, tol=1e-3):
    """The same iterates as :func:`kmeans`, computed with sorted prefix sums.

    Used only where the O(n x 2^b) version would take hours (AlexNet-sized
    layers); it returns what :func:`kmeans` would, up to float rounding.
    """
    v = np.sort(x[x != 0].astype(np.float64))
    if v.size == 0:
        return np.zeros(0), 0.0
    cs1 = np.concatenate([[0.0], np.cumsum(v)])
    cs2 = np.concatenate([[0.0], np.cumsum(v * v)])

    def stats(centres):
        split = np.searchsorted(v, 0.5 * (centres[1:] + centres[:-1]), side="right")
        lo, hi = np.concatenate([[0], split]), np.concatenate([split, [v.size]])
        n, s1, s2 = hi - lo, cs1[hi] - cs1[lo], cs2[hi] - cs2[lo]
        return n, s1, float((s2 - 2 * centres * s1 + n * centres**2).sum())

    free = np.linspace(v[0], v[-1], 2**bits)
    prev = None
    for _ in range(max_iter):
        centres = np.concatenate([free, [0.0]])
        order = np.argsort(centres, kind="stable")
        n, s1, dist = stats(centres[order])
        back = np.empty_like(order)
        back[order] = np.arange(order.size)
        n, s1 = n[back][:-1], s1[back][:-1]
        free = np.where(n > 0, s1 / np.maximum(n, 1), free)
        if prev is not None and abs(prev - dist) <= tol * max(prev, 1e-30):
            break
        prev = dist
    centres = np.sort(np.concatenate([free, [0.0]]))
    return free, stats(centres)[2]


def quantization_projection_fast(weights, nnz, budget, min_bits=1, max_bits=8):
    """:func:`quantization_projection` with :func:`kmeans_prefix_sums` inside."""
    global kmeans
    slow = kmeans
    kmeans = kmeans_prefix_sums
    try:
        return quantization_projection(weights, nnz, budget, min_bits, max_bits)
    finally:
        kmeans = slow
