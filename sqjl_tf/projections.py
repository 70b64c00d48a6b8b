"""The three projections of the method (docs/ALGORITHM.md section 3), as pure functions.

* :func:`sparse_projection` — the global 0-1 knapsack that decides which weights
  survive (per-layer sparsity is learned here);
* :func:`codebook` / :func:`quantize` — 1-D k-means with a reserved zero centre;
* :func:`quantization_projection` — codebooks for every allowed bit width and the
  exact multiple-choice knapsack that picks one width per layer.

All take a list of per-layer arrays (NumPy arrays or TensorFlow tensors /
variables, any shape) and return the same kind. They compute in NumPy, which
is the fastest on a CPU (``experiments/bench_projections.py`` times the
TensorFlow and XLA kernels of ``experiments/tf_projections.py`` beside them; they
stay out of the library until a GPU measurement says where they win).

Example:
    >>> import numpy as np
    >>> from sqjl_tf.budget import budget_bits
    >>> w = [np.random.randn(20, 50).astype("float32"), np.random.randn(500, 10).astype("float32")]
    >>> budget = budget_bits([x.size for x in w], nnz_budget=0.1, bit_budget=4)
    >>> w, nnz = sparse_projection(w, bits=[4, 4], budget_bits=budget)
    >>> v, bits = quantization_projection(w, nnz, budget)
    >>> sum(b * n for b, n in zip(bits, nnz)) <= budget
    True
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import numpy as np

from sqjl_tf import _kmeans, _knapsack

MAX_BITS = 8


def _is_tf(x) -> bool:
    return type(x).__module__.split(".")[0] in ("tensorflow", "keras") and not isinstance(
        x, np.ndarray
    )


def _to_numpy(weights, name: str = "weights") -> Tuple[List[np.ndarray], bool]:
    if isinstance(weights, np.ndarray) or _is_tf(weights):
        raise ValueError(
            f"Invalid value for argument `{name}`. Received: a single array. "
            "Expected a list of per-layer arrays."
        )
    weights = list(weights)
    as_tf = any(_is_tf(w) for w in weights)
    arrays = [np.asarray(w.numpy() if hasattr(w, "numpy") else w, dtype=np.float32) for w in weights]
    _check_finite(arrays, name)
    return arrays, as_tf


def _check_finite(arrays: List[np.ndarray], name: str = "weights") -> None:
    """NaN/inf would make k-means and the knapsack fail obscurely: refuse them here."""
    for i, a in enumerate(arrays):
        bad = a.size - int(np.count_nonzero(np.isfinite(a)))
        if bad:
            raise ValueError(
                f"Invalid value for argument `{name}`. Received: layer {i} (shape {a.shape}) "
                f"holding {bad} NaN or infinite values. Expected finite values (training "
                "became non-finite: lower the learning rate)."
            )


def _from_numpy(arrays: List[np.ndarray], as_tf: bool):
    if not as_tf:
        return arrays
    import tensorflow as tf

    return [tf.convert_to_tensor(a) for a in arrays]


def _check_budget(budget_bits: float) -> float:
    budget = float(budget_bits)
    if not math.isfinite(budget) or budget < 0:
        raise ValueError(
            "Invalid value for argument `budget_bits`. "
            f"Received: {budget_bits}. Expected a finite number >= 0."
        )
    return budget


def _check_one_per_layer(bits, arrays) -> None:
    if len(bits) != len(arrays):
        raise ValueError(
            f"Invalid value for argument `bits`. Received: {len(bits)} values. "
            f"Expected one per layer ({len(arrays)})."
        )


def _bits_for_levels(levels: int, min_bits: int) -> int:
    """The fewest bits (at least ``min_bits``) that index ``levels`` nonzero values."""
    return max(min_bits, math.ceil(math.log2(levels)) if levels > 1 else min_bits)


def _check_importance(factors: List[np.ndarray], arrays: List[np.ndarray]) -> None:
    shapes = [f.shape for f in factors]
    if shapes != [a.shape for a in arrays]:
        raise ValueError(
            f"Invalid value for argument `importance`. Received arrays of shapes {shapes}. "
            f"Expected one per layer, shaped as the weights: {[a.shape for a in arrays]}."
        )
    for f in factors:
        if not np.all(np.isfinite(f)) or np.any(f < 0):
            raise ValueError(
                "Invalid value for argument `importance`. Received an array with negative or "
                "non-finite entries. Expected finite values >= 0."
            )


def _check_bits_range(min_bits: int, max_bits: int) -> None:
    if not (isinstance(min_bits, (int, np.integer)) and 1 <= min_bits <= MAX_BITS):
        raise ValueError(
            f"Invalid value for argument `min_bits`. Received: {min_bits}. "
            f"Expected an integer in [1, {MAX_BITS}]."
        )
    if not (isinstance(max_bits, (int, np.integer)) and min_bits <= max_bits <= MAX_BITS):
        raise ValueError(
            f"Invalid value for argument `max_bits`. Received: {max_bits}. "
            f"Expected an integer in [min_bits={min_bits}, {MAX_BITS}]."
        )


def sparse_projection(
    weights, bits: Sequence[float], budget_bits: float, importance=None, keep=None
):
    """Zeroes the weights that do not fit the size budget (docs/ALGORITHM.md 3.1).

    Every nonzero weight w of layer l is an item of value w^2 and cost b_l bits.
    The weights are ranked globally by ``w^2 / b_l`` and the longest prefix of
    that ranking whose total cost is ``<= budget_bits`` is kept (ties broken by
    layer order, then position, so the budget holds exactly even with ties).

    With ``importance`` (an extension, not in the paper) the value of a weight
    is ``importance * w^2``: e.g. the diagonal empirical Fisher (mean squared
    gradient), which makes the value the second-order estimate of the loss
    increase when the weight is removed (Optimal Brain Damage), and the
    ranking indifferent to how the network's scale is spread over its layers.

    With ``keep`` (an extension) the marked nonzero weights are kept first,
    whatever their rank, and the rest of the budget goes by the ranking: the
    floor that keeps every layer connected (``unit_floor_masks``).

    Args:
        weights: list of per-layer arrays (NumPy or TF), any shapes.
        bits: per-layer bit width b_l (cost of one kept weight), each > 0.
        budget_bits: the budget S in bits.
        importance: optional list of non-negative arrays shaped as
            ``weights``; a weight of importance 0 is dropped.
        keep: optional list of boolean arrays shaped as ``weights``: nonzero
            weights always kept (each still costs ``b_l``; the budget may be
            exceeded only if they alone exceed it).

    Returns:
        (projected_weights, nnz): the weights with the dropped ones set to 0
        (same kind and shapes as the input) and the per-layer count of
        nonzeros kept (list of int).

    Raises:
        ValueError: on a negative or non-finite budget, a bit width <= 0,
            ``bits`` of the wrong length, or weights holding NaN or inf.
    """
    arrays, as_tf = _to_numpy(weights)
    budget = _check_budget(budget_bits)
    bits = [float(b) for b in bits]
    _check_one_per_layer(bits, arrays)
    for b in bits:
        if not (math.isfinite(b) and b > 0):
            raise ValueError(
                f"Invalid value for argument `bits`. Received: {b}. Expected numbers > 0."
            )
    if not arrays:
        return _from_numpy([], as_tf), []
    ranked = arrays
    if importance is not None:
        factors, _ = _to_numpy(importance, "importance")
        _check_importance(factors, arrays)
        ranked = [a * np.sqrt(f, dtype=np.float32) for a, f in zip(arrays, factors)]
    if keep is not None:
        forced = [np.asarray(k, bool).reshape(a.shape) & (a != 0) for k, a in zip(keep, arrays)]
        _check_one_per_layer(forced, arrays)
        budget = max(0.0, budget - sum(float(np.count_nonzero(f)) * b
                                       for f, b in zip(forced, bits)))
        ranked = [np.where(f, np.float32(0), r) for f, r in zip(forced, ranked)]
        masks = _knapsack.select_global(ranked, bits, budget)
        masks = [m | f.ravel() for m, f in zip(masks, forced)]
    else:
        masks = _knapsack.select_global(ranked, bits, budget)
    projected = [np.where(m.reshape(a.shape), a, np.float32(0)) for a, m in zip(arrays, masks)]
    nnz = [int(np.count_nonzero(p)) for p in projected]
    return _from_numpy(projected, as_tf), nnz


def unit_floor_masks(weights, unit_axes: Sequence[Sequence[int]], importance=None):
    """Marks, per layer, the largest weight feeding each output unit (the floor).

    Kept by :func:`sparse_projection` (``keep=``) whatever the budget's ranking,
    these weights give every output unit of every layer at least one input, so
    the compressed network stays connected: no layer is pruned to zero and the
    output always depends on the input.

    Args:
        weights: list of per-layer arrays.
        unit_axes: per layer, the axes that index output units.
        importance: optional per-layer factors, as in :func:`sparse_projection`.

    Returns:
        A list of boolean arrays shaped as ``weights``; a unit whose weights are
        all zero gets none.
    """
    arrays, _ = _to_numpy(weights)
    factors = _to_numpy(importance, "importance")[0] if importance is not None else None
    masks = []
    for i, a in enumerate(arrays):
        score = np.abs(a) if factors is None else np.abs(a) * np.sqrt(factors[i])
        axes = [ax % a.ndim for ax in unit_axes[i]] if a.ndim else []
        rest = [ax for ax in range(a.ndim) if ax not in axes]
        moved = np.transpose(score, rest + axes).reshape(-1, int(np.prod(
            [a.shape[ax] for ax in axes], dtype=np.int64)) if axes else 1)  # [fan_in, units]
        best = np.argmax(moved, axis=0)  # [units]
        flat = np.zeros(moved.shape, bool)
        cols = np.arange(moved.shape[1])
        flat[best, cols] = moved[best, cols] > 0
        shaped = flat.reshape([a.shape[ax] for ax in rest + axes])
        masks.append(np.transpose(shaped, np.argsort(rest + axes)))
    return masks


def layer_normalized_importance(weights, importance=None) -> List[np.ndarray]:
    """Factors that make each weight's value its layer-normalized score (LAMP).

    A weight's value in :func:`sparse_projection` is ``f * w^2``. These factors
    ``f`` turn it into the score of Lee et al., ICLR 2021 ("Layer-adaptive
    sparsity for the magnitude-based pruning"): the weight's value divided by
    the sum of the values in its layer that are at least as large,
    ``v_u / sum_{v >= v_u} v``. Every layer's largest weight scores 1 and a
    layer's scores do not change when its weights are scaled, so the global
    ranking no longer follows how a network spreads its scale over its layers
    (which BatchNorm leaves arbitrary); within a layer the order is unchanged.

    Args:
        weights: list of per-layer arrays.
        importance: optional per-layer factors (as in :func:`sparse_projection`)
            defining the values ``importance * w^2`` that are normalized.

    Returns:
        A list of float32 arrays shaped as ``weights``: the new factors (0 for
        a zero weight).

    Example:
        >>> f = layer_normalized_importance([np.array([3.0, 1.0, 2.0])])[0]
        >>> np.round(f * np.array([3.0, 1.0, 2.0]) ** 2, 3)  # 9/9, 1/14, 4/13
        array([1.   , 0.071, 0.308])
    """
    arrays, _ = _to_numpy(weights)
    factors = None
    if importance is not None:
        factors, _ = _to_numpy(importance, "importance")
        _check_importance(factors, arrays)
    result = []
    for i, a in enumerate(arrays):
        base = np.ones(a.shape, np.float64) if factors is None else factors[i].astype(np.float64)
        value = (base * np.square(a, dtype=np.float64)).ravel()  # [n]
        ascending = np.sort(value)
        at_least = np.cumsum(ascending[::-1])[::-1]  # at_least[j] = sum(ascending[j:])
        # Sum of the values >= each value (ties share it): [n]
        tail = at_least[np.searchsorted(ascending, value, "left")]
        scale = np.divide(base.ravel(), tail, out=np.zeros_like(tail), where=(tail > 0) & (value > 0))
        result.append(scale.reshape(a.shape).astype(np.float32))
    return result


def codebook(x, bits: int, reserve_zero: bool = True) -> np.ndarray:
    """The codebook of one layer: 1-D k-means on its nonzero values (3.2).

    Lloyd's algorithm runs from the reference's linspace start with the
    reference's stopping rule (so it reproduces the reference's codebook) and
    from a quantile start; the one with the lower distortion is returned.

    Args:
        x: array (any shape); its zeros stay zero and are not clustered.
        bits: width b; the codebook has at most 2^b nonzero centres.
        reserve_zero: whether 0 is an extra fixed centre (joint and prune
            modes). Without it (quantize-only mode) small values are not pulled
            to 0 and the 2^b centres are all free.

    Returns:
        Sorted float32 centres; they include 0.0 when ``reserve_zero``. Has at
        most ``2**bits`` nonzero entries (fewer if x has fewer distinct values).

    Example:
        >>> codebook(np.array([0.0, 1.0, 1.1, -2.0, 3.0]), bits=1).size  # 2 + zero
        3
    """
    _check_bits_range(bits, bits)
    arr = np.asarray(x.numpy() if hasattr(x, "numpy") else x, dtype=np.float32)
    _check_finite([arr], "x")
    sv = _kmeans.SortedValues.from_array(arr)
    [[(free, _)]] = _kmeans.kmeans_widths([sv], [bits], reserve_zero)
    centres = np.concatenate([free, [0.0]]) if reserve_zero else free
    return np.unique(centres.astype(np.float32))


def quantize(x, centres):
    """Replaces every nonzero entry of x by its nearest centre; zeros stay zero.

    Args:
        x: array (NumPy or TF), any shape.
        centres: 1-D sorted codebook (as returned by :func:`codebook`).

    Returns:
        An array of the same kind, shape and dtype float32.
    """
    as_tf = _is_tf(x)
    arr = np.asarray(x.numpy() if hasattr(x, "numpy") else x, dtype=np.float32)
    out = _quantize_np(arr, np.asarray(centres, dtype=np.float32))
    return _from_numpy([out], as_tf)[0]


def _quantize_np(arr: np.ndarray, centres: np.ndarray) -> np.ndarray:
    flat = arr.ravel()
    nonzero = np.flatnonzero(flat)  # zeros stay zero; only the nonzeros are looked up
    out = np.zeros(flat.size, dtype=np.float32)
    if centres.size and nonzero.size:
        c, nearest = _kmeans.nearest_centres(flat[nonzero], centres)
        out[nonzero] = c[nearest]
    return out.reshape(arr.shape)


def quantization_projection(
    weights,
    nnz: Sequence[int],
    budget_bits: float,
    min_bits: int = 1,
    max_bits: int = MAX_BITS,
    reserve_zero: bool = True,
):
    """Quantizes every layer with its best bit width under the budget (3.3).

    For every layer l and width b in [min_bits, max_bits] it computes the
    codebook of :func:`codebook` and its distortion D_l(b) (squared error over
    the whole layer, entries sent to zero included), then chooses one b_l per
    layer minimising ``sum_l D_l(b_l)`` subject to ``sum_l b_l * nnz_l <=
    budget_bits`` — exactly (dynamic programming over Pareto frontiers), where
    the reference's greedy may leave budget unused. A layer whose values need
    fewer levels gets the smallest width that holds them, so projecting twice
    changes nothing.

    Args:
        weights: list of per-layer arrays (NumPy or TF): W + U in ADMM.
        nnz: per-layer nonzero counts that the budget charges (of W).
        budget_bits: the budget S in bits.
        min_bits: lowest width allowed (``bwlb``).
        max_bits: highest width allowed (8; equal to min_bits for fixed bits).
        reserve_zero: keep 0 as a fixed extra centre (False in quantize-only
            mode).

    Returns:
        (projected_weights, bits): the quantized layers (same kind and shapes)
        and the chosen widths (list of int).

    Raises:
        ValueError: if even ``min_bits`` everywhere exceeds the budget, on
            weights holding NaN or inf, or on invalid arguments.
    """
    arrays, as_tf = _to_numpy(weights)
    budget = _check_budget(budget_bits)
    _check_bits_range(min_bits, max_bits)
    nnz = [int(n) for n in nnz]
    if len(nnz) != len(arrays) or any(n < 0 for n in nnz):
        raise ValueError(
            f"Invalid value for argument `nnz`. Received: {nnz}. "
            f"Expected {len(arrays)} non-negative counts, one per layer."
        )
    cheapest = min_bits * sum(nnz)
    if cheapest > budget:
        raise ValueError(
            f"Invalid value for argument `budget_bits`. Received: {budget_bits}. "
            f"Expected at least {cheapest} bits: {sum(nnz)} nonzeros at min_bits={min_bits} "
            "do not fit (the budget is infeasible)."
        )
    if not arrays:
        return _from_numpy([], as_tf), []
    widths = np.arange(min_bits, max_bits + 1)
    costs = np.array([[b * n for b in widths] for n in nnz], dtype=np.float64)  # [L, C]
    layers = [_kmeans.SortedValues.from_array(arr) for arr in arrays]
    # A width is only worth a k-means if it can fit with every other layer at its cheapest.
    others = cheapest - min_bits * np.array(nnz, dtype=np.float64)  # [L]
    feasible = costs + others[:, None] <= budget  # [L, C]
    books = _kmeans.kmeans_widths(layers, widths, reserve_zero, needed=feasible)  # [L][C]
    dists = np.array([[d for _, d in row] for row in books])  # [L, C]
    choice = _knapsack.allocate_exact(costs, dists, budget)
    assert choice is not None  # feasibility was checked above
    projected, bits = [], []
    for layer, row, j in zip(layers, books, choice):
        free = row[j][0]
        centres = np.concatenate([free, [0.0]]) if reserve_zero else free
        q, levels = layer.quantize(centres)
        projected.append(q)
        bits.append(int(min(widths[j], _bits_for_levels(levels, min_bits))))
    return _from_numpy(projected, as_tf), bits


def quantize_with_bits(weights, bits: Sequence[int], reserve_zero: bool = True):
    """Quantizes every layer with its own, given bit width (no allocation).

    Used when the widths are fixed (``fixedbits``, after ``bits_epoch``) and to
    finalise a model: layer l gets the codebook of :func:`codebook` with
    ``bits[l]`` bits; zeros stay zero.

    Args:
        weights: list of per-layer arrays (NumPy or TF).
        bits: per-layer widths in [1, 8].
        reserve_zero: keep 0 as a fixed extra centre.

    Returns:
        (quantized_weights, bits): same kind and shapes as the input; bits as
        given, lowered where a layer needs fewer levels.
    """
    arrays, as_tf = _to_numpy(weights)
    bits = [int(b) for b in bits]
    _check_one_per_layer(bits, arrays)
    for b in bits:
        _check_bits_range(b, b)
    layers = [_kmeans.SortedValues.from_array(a) for a in arrays]
    out, used = [None] * len(arrays), list(bits)
    for width in sorted(set(bits)):
        group = [i for i, b in enumerate(bits) if b == width]
        books = _kmeans.kmeans_widths([layers[i] for i in group], [width], reserve_zero)
        for i, [(free, _)] in zip(group, books):
            centres = np.concatenate([free, [0.0]]) if reserve_zero else free
            out[i], levels = layers[i].quantize(centres)
            used[i] = min(width, _bits_for_levels(levels, 1))
    return _from_numpy(out, as_tf), used
