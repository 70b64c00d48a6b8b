"""Property tests of the projections (ALGORITHM.md section 3)."""

import itertools

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sqjl_tf import _knapsack, projections
from sqjl_tf.budget import budget_bits

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def layer_lists(draw, max_layers=4, max_size=60):
    """Lists of small layers with ties, exact zeros and constant layers."""
    num_layers = draw(st.integers(1, max_layers))
    layers = []
    for _ in range(num_layers):
        shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
        size = int(np.prod(shape))
        if size > max_size:
            shape, size = (max_size,), max_size
        kind = draw(st.sampled_from(["normal", "ties", "zeros", "constant", "sparse"]))
        seed = draw(st.integers(0, 2**31 - 1))
        rng = np.random.default_rng(seed)
        if kind == "normal":
            x = rng.standard_normal(size)
        elif kind == "ties":
            x = rng.choice([-1.0, -0.5, 0.5, 1.0, 2.0], size)
        elif kind == "zeros":
            x = np.zeros(size)
        elif kind == "constant":
            x = np.full(size, draw(st.sampled_from([-0.3, 0.7, 1.0])))
        else:
            x = rng.standard_normal(size) * (rng.random(size) < 0.3)
        layers.append(x.astype(np.float32).reshape(shape))
    return layers


def _reference_sparse(weights, bits, budget):
    """Straightforward greedy: full stable sort, longest prefix that fits."""
    scores = np.concatenate([w.ravel().astype(np.float32) ** 2 / np.float32(b) for w, b in zip(weights, bits)])
    costs = np.concatenate([np.full(w.size, b, float) for w, b in zip(weights, bits)])
    order = np.argsort(-scores, kind="stable")
    order = order[scores[order] > 0]
    keep = np.zeros(scores.size, bool)
    keep[order[np.cumsum(costs[order]) <= budget]] = True
    return keep


@SETTINGS
@given(layer_lists(), st.lists(st.integers(1, 8), min_size=4, max_size=4), st.floats(0, 1.2))
def test_sparse_projection_holds_budget_and_matches_greedy(weights, bits, fraction):
    bits = bits[: len(weights)]
    budget = fraction * sum(b * w.size for b, w in zip(bits, weights))
    out, nnz = projections.sparse_projection(weights, bits, budget)
    assert sum(b * n for b, n in zip(bits, nnz)) <= budget
    for w, o, n in zip(weights, out, nnz):
        assert o.shape == w.shape and o.dtype == np.float32
        assert np.count_nonzero(o) == n
        assert np.all((o == 0) | (o == w))  # kept weights unchanged
        assert np.all(o[w == 0] == 0)  # zeros stay zero
    kept = np.concatenate([(o != 0).ravel() for o in out])
    np.testing.assert_array_equal(kept, _reference_sparse(weights, bits, budget))
    again, nnz2 = projections.sparse_projection(out, bits, budget)
    assert nnz2 == nnz
    for a, o in zip(again, out):
        np.testing.assert_array_equal(a, o)


def test_sparse_projection_ties_never_exceed_budget():
    weights = [np.ones((10,), np.float32), -np.ones((7,), np.float32)]
    out, nnz = projections.sparse_projection(weights, [3, 3], budget_bits=20)
    assert 3 * sum(nnz) <= 20 and sum(nnz) == 6
    # Ties are broken by layer order, then position.
    np.testing.assert_array_equal(out[0], [1, 1, 1, 1, 1, 1, 0, 0, 0, 0])


def test_sparse_projection_keeps_highest_score_per_bit():
    weights = [np.array([3.0, 0.1], np.float32), np.array([2.0, 2.0], np.float32)]
    # scores: 9/8, 0.01/8 ; 4/1, 4/1  -> 2 bits of budget keep the second layer only
    out, nnz = projections.sparse_projection(weights, [8, 1], budget_bits=2)
    assert nnz == [0, 2]
    out, nnz = projections.sparse_projection(weights, [8, 1], budget_bits=10)
    assert nnz == [1, 2]


@SETTINGS
@given(layer_lists(), st.integers(1, 3), st.integers(3, 8), st.floats(0.3, 1.5), st.booleans())
def test_quantization_projection_properties(weights, min_bits, max_bits, fraction, reserve_zero):
    nnz = [int(np.count_nonzero(w)) for w in weights]
    budget = fraction * max_bits * sum(nnz)
    if min_bits * sum(nnz) > budget:
        with pytest.raises(ValueError, match="budget_bits"):
            projections.quantization_projection(weights, nnz, budget, min_bits, max_bits, reserve_zero)
        return
    out, bits = projections.quantization_projection(
        weights, nnz, budget, min_bits, max_bits, reserve_zero
    )
    assert sum(b * n for b, n in zip(bits, nnz)) <= budget
    for w, o, b in zip(weights, out, bits):
        assert o.shape == w.shape
        assert min_bits <= b <= max_bits
        assert np.unique(o[o != 0]).size <= 2**b
        assert np.all(o[w == 0] == 0)
    again, bits2 = projections.quantization_projection(
        out, nnz, budget, min_bits, max_bits, reserve_zero
    )
    assert bits2 == bits
    for a, o in zip(again, out):
        np.testing.assert_array_equal(a, o)


@SETTINGS
@given(
    st.integers(1, 4),
    st.integers(1, 4),
    st.integers(0, 2**31 - 1),
    st.floats(0.0, 1.0),
)
def test_exact_allocation_matches_brute_force(num_groups, num_choices, seed, fraction):
    rng = np.random.default_rng(seed)
    nnz = rng.integers(0, 20, num_groups)
    widths = np.arange(1, num_choices + 1)
    costs = (nnz[:, None] * widths[None, :]).astype(float)
    dists = np.sort(rng.random((num_groups, num_choices)) * 10, axis=1)[:, ::-1]
    dists = np.round(dists, 1)  # create ties
    lo, hi = costs.min(1).sum(), costs.max(1).sum()
    budget = lo + fraction * (hi - lo)
    best = None
    for combo in itertools.product(range(num_choices), repeat=num_groups):
        cost = sum(costs[g, c] for g, c in enumerate(combo))
        if cost > budget:
            continue
        dist = sum(dists[g, c] for g, c in enumerate(combo))
        if best is None or dist < best[0] - 1e-9 or (abs(dist - best[0]) <= 1e-9 and cost < best[1]):
            best = (dist, cost)
    choice = _knapsack.allocate_exact(costs, dists, budget)
    got_cost = sum(costs[g, c] for g, c in enumerate(choice))
    got_dist = sum(dists[g, c] for g, c in enumerate(choice))
    assert got_cost <= budget
    assert got_dist == pytest.approx(best[0], abs=1e-9)
    greedy = _knapsack.allocate_greedy(costs, dists, budget)
    assert got_dist <= sum(dists[g, c] for g, c in enumerate(greedy)) + 1e-9


def test_exact_allocation_reports_infeasible():
    assert _knapsack.allocate_exact(np.array([[5.0, 10.0]]), np.array([[1.0, 0.0]]), 4) is None


def test_infeasible_budget_raises_clear_error():
    w = [np.ones((10,), np.float32)]
    with pytest.raises(ValueError, match=r"budget_bits.*Received: 5.*at least 10"):
        projections.quantization_projection(w, [10], budget_bits=5)
    with pytest.raises(ValueError, match="budget_bits"):
        projections.sparse_projection(w, [2], budget_bits=float("nan"))
    with pytest.raises(ValueError, match="budget_bits"):
        projections.sparse_projection(w, [2], budget_bits=-1)
    with pytest.raises(ValueError, match="bits"):
        projections.sparse_projection(w, [2, 3], budget_bits=4)
    with pytest.raises(ValueError, match="min_bits"):
        projections.quantization_projection(w, [10], 100, min_bits=0)
    with pytest.raises(ValueError, match="weights"):
        projections.sparse_projection(np.ones(3), [2], 4)


def test_codebook_and_quantize():
    x = np.array([0.0, 1.0, 1.1, 0.9, -2.0, -2.1, 3.0, 0.0], np.float32)
    centres = projections.codebook(x, bits=2)
    assert 0.0 in centres and np.count_nonzero(centres) <= 4
    q = projections.quantize(x, centres)
    assert q[0] == 0 and q[-1] == 0
    assert np.unique(q[q != 0]).size <= 4
    # 6 distinct values, 4 levels: the optimum merges the two closest pairs.
    assert np.sum((x - q) ** 2) <= 0.01 + 1e-6
    # Without the reserved zero the centres are all free.
    free = projections.codebook(np.array([0.01, 0.02, 5.0, 5.1], np.float32), bits=1, reserve_zero=False)
    assert free.size == 2 and 0.0 not in free


def test_codebook_beats_reference_lloyd():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(5000).astype(np.float32)
    for bits in (2, 4, 6):
        ours = projections.quantize(x, projections.codebook(x, bits))
        free = np.linspace(x.min(), x.max(), 2**bits)
        prev = None
        for _ in range(100):  # the reference: Lloyd from a linspace start, tolerance 1e-3
            c = np.concatenate([free, [0.0]])
            d2 = (x[:, None] - c[None]) ** 2
            a = np.argmin(d2, 1)
            dist = d2.min(1).sum()
            cnt = np.bincount(a, minlength=c.size)[:-1]
            free = np.where(cnt > 0, np.bincount(a, x, c.size)[:-1] / np.maximum(cnt, 1), free)
            if prev is not None and abs(prev - dist) <= 1e-3 * prev:
                break
            prev = dist
        c = np.concatenate([free, [0.0]])
        ref = c[np.argmin((x[:, None] - c[None]) ** 2, 1)]
        # Same iterates as the reference; ours is stored as float32 weights.
        assert np.sum((x - ours) ** 2) <= np.sum((x - ref) ** 2) * (1 + 1e-6)


def test_tf_inputs_give_tf_outputs():
    weights = [tf.random.normal([4, 5], seed=1), tf.Variable(tf.random.normal([3, 3], seed=2))]
    budget = budget_bits([20, 9], 0.5, 3)
    out, nnz = projections.sparse_projection(weights, [3, 3], budget)
    assert all(isinstance(o, tf.Tensor) for o in out)
    q, bits = projections.quantization_projection(out, nnz, budget)
    assert all(isinstance(o, tf.Tensor) for o in q)
    assert [tuple(o.shape) for o in q] == [(4, 5), (3, 3)]


def test_sparse_projection_importance_scales_the_value():
    rng = np.random.default_rng(5)
    weights = [rng.standard_normal((6, 7)).astype(np.float32),
               0.1 * rng.standard_normal((30,)).astype(np.float32)]
    budget = 3.0 * 20
    plain, nnz = projections.sparse_projection(weights, [3, 3], budget)
    ones = [np.ones(w.shape, np.float32) for w in weights]
    same, nnz_ones = projections.sparse_projection(weights, [3, 3], budget, importance=ones)
    assert nnz_ones == nnz and all(np.array_equal(a, b) for a, b in zip(plain, same))
    assert nnz[1] == 0  # by magnitude, the small layer loses every weight
    # value = importance * w^2: importance 100 puts the small layer on a par with the big one.
    boost = [np.ones((6, 7), np.float32), np.full((30,), 100.0, np.float32)]
    kept, nnz_boost = projections.sparse_projection(weights, [3, 3], budget, importance=boost)
    assert sum(nnz_boost) == 20 and nnz_boost[1] > 0
    scaled, _ = projections.sparse_projection([weights[0], 10 * weights[1]], [3, 3], budget)
    assert all(np.array_equal(a != 0, b != 0) for a, b in zip(kept, scaled))
    assert all(np.array_equal(k[k != 0], w[k != 0]) for k, w in zip(kept, weights))  # values kept


def test_layer_normalized_importance_gives_lamp_scores():
    weights = [np.array([[3.0, 1.0], [2.0, 0.0]], np.float32), np.array([2.0, -2.0, 1.0], np.float32)]
    factors = projections.layer_normalized_importance(weights)
    scores = [f * np.square(w) for f, w in zip(factors, weights)]
    # Each value over the sum of its layer's values at least as large; ties share the sum.
    np.testing.assert_allclose(scores[0], [[1.0, 1 / 14], [4 / 13, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(scores[1], [4 / 8, 4 / 8, 1 / 9], rtol=1e-6)
    assert factors[0][1, 1] == 0.0  # a zero weight scores 0, with no division by zero
    # With factors, the values normalized are importance * w^2.
    boosted = projections.layer_normalized_importance(
        weights, [np.ones((2, 2), np.float32), np.array([1.0, 4.0, 1.0], np.float32)])
    np.testing.assert_allclose(boosted[1] * np.square(weights[1]), [4 / 20, 1.0, 1 / 21],
                               rtol=1e-6)
    with pytest.raises(ValueError, match="Invalid value for argument `importance`"):
        projections.layer_normalized_importance(weights, [np.ones((2, 2))])


def test_layer_normalized_ranking_ignores_the_layers_scales():
    rng = np.random.default_rng(3)
    weights = [rng.standard_normal((8, 9)).astype(np.float32),
               rng.standard_normal((40,)).astype(np.float32)]
    budget = 3.0 * 30
    kept = {}
    for scale in (1.0, 0.01):  # by magnitude, a layer 100x smaller would lose every weight
        scaled = [weights[0], scale * weights[1]]
        factors = projections.layer_normalized_importance(scaled)
        kept[scale], nnz = projections.sparse_projection(scaled, [3, 3], budget, importance=factors)
        assert sum(nnz) == 30 and min(nnz) > 0
        for k, w in zip(kept[scale], scaled):  # within a layer, the largest weights are kept
            assert np.abs(w[k != 0]).min() >= np.abs(w[k == 0]).max()
    assert all(np.array_equal(a != 0, b != 0) for a, b in zip(kept[1.0], kept[0.01]))
    _, by_magnitude = projections.sparse_projection([weights[0], 0.01 * weights[1]], [3, 3], budget)
    assert by_magnitude[1] == 0


@pytest.mark.parametrize("importance", [
    [np.ones((2, 2))],  # one array for two layers
    [np.ones((2, 2)), np.ones((4,))],  # wrong shape
    [np.ones((2, 2)), -np.ones((3,))],  # negative
    [np.ones((2, 2)), np.full((3,), np.nan)],
])
def test_sparse_projection_rejects_bad_importance(importance):
    weights = [np.ones((2, 2), np.float32), np.ones((3,), np.float32)]
    with pytest.raises(ValueError, match="Invalid value for argument `importance`"):
        projections.sparse_projection(weights, [2, 2], 8, importance=importance)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("projection", ["sparse", "quantization", "with_bits", "codebook"])
def test_projections_reject_non_finite_weights(projection, bad):
    w = [np.ones((4, 5), np.float32), np.linspace(-1, 1, 30, dtype=np.float32)]
    w[1][7] = bad
    call = {
        "sparse": lambda: projections.sparse_projection(w, [4, 4], 100),
        "quantization": lambda: projections.quantization_projection(w, [20, 30], 400),
        "with_bits": lambda: projections.quantize_with_bits(w, [2, 2]),
        "codebook": lambda: projections.codebook(w[1], 2),
    }[projection]
    with pytest.raises(ValueError, match="NaN or infinite.*Expected finite values"):
        call()


def test_unit_floor_marks_the_largest_weight_of_every_unit():
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((6, 4)).astype(np.float32)       # units: last axis
    transposed = rng.standard_normal((3, 3, 5, 2)).astype(np.float32)  # units: axis 2
    dense[:, 3] = 0  # a unit with no weight left gets none
    masks = projections.unit_floor_masks([dense, transposed], [(1,), (2,)])
    assert masks[0].sum(axis=0).tolist() == [1, 1, 1, 0]
    rows, cols = np.nonzero(masks[0])
    assert np.array_equal(rows[np.argsort(cols)], np.abs(dense[:, :3]).argmax(axis=0))
    per_unit = np.moveaxis(masks[1], 2, -1).reshape(-1, 5)
    assert per_unit.sum(axis=0).tolist() == [1] * 5


def test_sparse_projection_keeps_the_floor_and_holds_the_budget():
    rng = np.random.default_rng(1)
    big = rng.standard_normal((50, 20)).astype(np.float32) * 10
    small = rng.standard_normal((40, 8)).astype(np.float32) * 0.01  # the ranking drops it all
    weights, bits = [big, small], [4, 4]
    plain, nnz = projections.sparse_projection(weights, bits, budget_bits=4 * 100)
    assert nnz[1] == 0
    keep = projections.unit_floor_masks(weights, [(1,), (1,)])
    kept, nnz = projections.sparse_projection(weights, bits, budget_bits=4 * 100, keep=keep)
    assert nnz[1] == 8 and np.all(kept[1][keep[1]] == small[keep[1]])
    assert 4 * sum(nnz) <= 4 * 100
