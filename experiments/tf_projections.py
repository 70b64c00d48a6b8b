"""TensorFlow (optionally XLA-compiled) kernels of the projections: a benchmark's candidates.

These are pure tensor-to-tensor functions (no variables inside, so they can be
``jit_compile``d and called on mirrored variables' values; assign outside).
On a CPU the NumPy kernels of ``_knapsack``/``_kmeans`` are faster (measured in
``experiments/bench_projections.py``: XLA's sort is slow on CPU); on a GPU the
global sort of the sparse projection is where TensorFlow should win. They are
timed in the benchmark and kept out of the library (``sqjl_tf.projections``) until
a measurement on a GPU says where they win.
"""

from __future__ import annotations

import functools

import tensorflow as tf


def _sparse_keep(scores, costs, budget):
    """Mask of the longest prefix of the ranking by score that fits the budget.

    Args:
        scores: [n] float32, w^2 / b_l (0 for exact zeros, never kept).
        costs: [n] float32, b_l of each item.
        budget: scalar float32 (float64 when available) budget.

    Returns:
        [n] bool mask.
    """
    order = tf.argsort(scores, direction="DESCENDING", stable=True)  # [n]
    sorted_cost = tf.gather(tf.cast(costs, tf.float64), order)
    sorted_score = tf.gather(scores, order)
    sorted_cost = tf.where(sorted_score > 0, sorted_cost, tf.zeros_like(sorted_cost))
    keep_sorted = (tf.cumsum(sorted_cost) <= tf.cast(budget, tf.float64)) & (sorted_score > 0)
    inverse = tf.math.invert_permutation(order)
    return tf.gather(keep_sorted, inverse)


sparse_keep = tf.function(_sparse_keep, reduce_retracing=True)
sparse_keep_xla = tf.function(_sparse_keep, jit_compile=True, reduce_retracing=True)


def _kmeans(values, init, reserve_zero: bool, max_iter: int = 100, tol: float = 1e-3):
    """Lloyd's 1-D k-means on sorted values, via prefix sums.

    Args:
        values: [m] float64 sorted nonzero values.
        init: [K] float64 initial free centres.
        reserve_zero: whether a fixed centre 0 is added.
        max_iter: iteration cap.
        tol: relative distortion change that stops the loop.

    Returns:
        (centres, distortion): [K (+1)] sorted centres (0 included when
        ``reserve_zero``) and the squared error.
    """
    zero = tf.zeros([1], values.dtype)
    cs1 = tf.concat([zero, tf.cumsum(values)], 0)  # [m+1]
    cs2 = tf.concat([zero, tf.cumsum(values * values)], 0)
    m = tf.shape(values, out_type=tf.int64)[0]
    centres0 = tf.sort(tf.concat([init, zero], 0) if reserve_zero else init)
    fixed0 = tf.equal(centres0, 0.0) if reserve_zero else tf.zeros_like(centres0, tf.bool)

    def stats(centres):
        mid = 0.5 * (centres[1:] + centres[:-1])
        split = tf.searchsorted(values, mid, side="right", out_type=tf.int64)
        lo = tf.concat([[tf.constant(0, tf.int64)], split], 0)
        hi = tf.concat([split, [m]], 0)
        counts = tf.cast(hi - lo, values.dtype)
        sums = tf.gather(cs1, hi) - tf.gather(cs1, lo)
        sq = tf.gather(cs2, hi) - tf.gather(cs2, lo)
        dist = tf.reduce_sum(sq - 2.0 * centres * sums + counts * centres * centres)
        return counts, sums, tf.maximum(dist, 0.0)

    def cond(i, centres, prev, dist):
        return (i < max_iter) & (tf.abs(prev - dist) > tol * dist)

    def body(i, centres, prev, dist):
        counts, sums, _ = stats(centres)
        moved = tf.where(counts > 0, sums / tf.maximum(counts, 1.0), centres)
        moved = tf.sort(tf.where(fixed0, tf.zeros_like(moved), moved))
        _, _, new_dist = stats(moved)
        return i + 1, moved, dist, new_dist

    _, _, d0 = stats(centres0)
    inf = tf.constant(float("inf"), values.dtype)
    _, centres, _, dist = tf.while_loop(cond, body, (tf.constant(0), centres0, inf, d0))
    return centres, dist


@functools.lru_cache(maxsize=None)
def kmeans_fn(reserve_zero: bool, jit: bool):
    """A compiled k-means for one setting (cached per setting)."""
    return tf.function(
        functools.partial(_kmeans, reserve_zero=reserve_zero),
        jit_compile=jit,
        reduce_retracing=True,
    )
