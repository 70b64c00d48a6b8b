"""Knapsack solvers behind the projections (NumPy).

* ``select_global``: the 0-1 knapsack of the sparse projection (docs/ALGORITHM.md 3.1),
  solved as the reference does (longest prefix of the ranking by w^2 / b_l that
  fits), but by a two-pass radix select on the float bit patterns instead of a
  full sort: O(n) passes plus a sort of one histogram bin.
* ``allocate_exact``: the multiple-choice knapsack of the bit allocation (3.3),
  solved exactly by dynamic programming over Pareto frontiers with bounds.
* ``allocate_greedy``: the reference's convex-hull greedy for the same problem.
"""

from __future__ import annotations

from typing import List, Sequence

import numpy as np

_HI_BITS = 16  # first radix pass: sign + exponent + 7 mantissa bits of float32.
_NUM_BINS = 1 << _HI_BITS


def _scores(w: np.ndarray, bits: float) -> np.ndarray:
    w = np.asarray(w, dtype=np.float32).ravel()
    with np.errstate(over="ignore"):  # |w| > 1.8e19 scores inf: ranked first, still exact
        return (w * w) / np.float32(bits)  # [n], >= 0


def select_global(weights: Sequence[np.ndarray], bits: Sequence[float], budget: float):
    """Keeps the longest prefix of the global ranking by w^2/b_l that fits.

    Items are ranked by score ``w^2 / b_l`` (descending; ties by layer, then
    position), each costs ``b_l``; exact zeros are never kept and cost nothing.

    Args:
        weights: per-layer arrays (any shape).
        bits: per-layer cost of one kept weight.
        budget: total cost allowed.

    Returns:
        A list of boolean masks (flattened, one per layer) of the kept weights.
    """
    scores = [_scores(w, b) for w, b in zip(weights, bits)]
    keys = [s.view(np.uint32) for s in scores]
    hi = [(k >> (32 - _HI_BITS)).astype(np.int64) for k in keys]
    cost_hist = np.zeros(_NUM_BINS, dtype=np.float64)
    for h, s, b in zip(hi, scores, bits):
        counts = np.bincount(h, minlength=_NUM_BINS).astype(np.float64)
        counts[0] -= np.count_nonzero(s == 0)  # exact zeros are not items
        cost_hist += counts * float(b)
    total = cost_hist.sum()
    if total <= budget:
        return [s != 0 for s in scores]
    # cost of all bins strictly above bin i, for every i
    above = np.concatenate([np.cumsum(cost_hist[::-1])[::-1][1:], [0.0]])
    # boundary bin: the highest bin that does not fit entirely
    fits_all = above + cost_hist <= budget
    boundary = int(np.nonzero(~fits_all)[0].max())
    remaining = budget - above[boundary]
    masks = [h > boundary for h in hi]
    # second pass: sort the boundary bin's items, take the prefix that fits.
    cand_layer, cand_index, cand_score = [], [], []
    for layer, (h, s) in enumerate(zip(hi, scores)):
        idx = np.nonzero((h == boundary) & (s != 0))[0]
        cand_layer.append(np.full(idx.size, layer, dtype=np.int64))
        cand_index.append(idx)
        cand_score.append(s[idx])
    cand_layer = np.concatenate(cand_layer)
    cand_index = np.concatenate(cand_index)
    cand_score = np.concatenate(cand_score)
    order = np.argsort(-cand_score, kind="stable")  # ties: layer, then position
    cost = np.asarray(bits, dtype=np.float64)[cand_layer[order]]
    take = np.count_nonzero(np.cumsum(cost) <= remaining)
    chosen = order[:take]
    for layer in range(len(weights)):
        sel = cand_index[chosen[cand_layer[chosen] == layer]]
        masks[layer][sel] = True
    return masks


def _hull(costs: np.ndarray, dists: np.ndarray) -> List[int]:
    """Indices of the lower convex hull of (cost, distortion), by cost."""
    order = np.lexsort((dists, costs))
    pareto = []
    for i in order:
        if pareto and dists[i] >= dists[pareto[-1]]:
            continue
        if pareto and costs[i] == costs[pareto[-1]]:
            continue
        pareto.append(int(i))
    hull: List[int] = []
    for i in pareto:
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # slope(a,b) must be steeper (more negative) than slope(b,i)
            lhs = (dists[b] - dists[a]) * (costs[i] - costs[b])
            rhs = (dists[i] - dists[b]) * (costs[b] - costs[a])
            if lhs <= rhs:
                break
            hull.pop()
        hull.append(i)
    return hull


def allocate_greedy(costs: np.ndarray, dists: np.ndarray, budget: float) -> np.ndarray:
    """The reference's greedy multiple-choice knapsack.

    Drops dominated choices, keeps each group's lower convex hull, starts every
    group at its cheapest choice and takes upgrades in order of distortion saved
    per unit of cost while they fit.

    Args:
        costs: [L, C] cost of each choice.
        dists: [L, C] distortion of each choice.
        budget: total cost allowed.

    Returns:
        [L] index of the chosen column per group, or None if even the
        cheapest choices do not fit.
    """
    num_groups = costs.shape[0]
    hulls = [_hull(costs[g], dists[g]) for g in range(num_groups)]
    choice = np.array([h[0] for h in hulls], dtype=np.int64)
    spent = float(sum(costs[g, choice[g]] for g in range(num_groups)))
    if spent > budget:
        return None
    upgrades = []
    for g, h in enumerate(hulls):
        for a, b in zip(h[:-1], h[1:]):
            gain = (dists[g, a] - dists[g, b]) / max(costs[g, b] - costs[g, a], 1e-300)
            upgrades.append((-gain, g, b))
    upgrades.sort()
    for _, g, b in upgrades:
        a = choice[g]
        extra = costs[g, b] - costs[g, a]
        if costs[g, b] <= costs[g, a]:
            continue
        if spent + extra > budget:
            break
        spent += extra
        choice[g] = b
    return choice


def allocate_exact(costs: np.ndarray, dists: np.ndarray, budget: float) -> np.ndarray:
    """Exact multiple-choice knapsack: min total distortion within the budget.

    Dynamic programming over the Pareto frontier of (cost, distortion) of
    partial assignments, group by group, pruned by (a) the cheapest completion
    of the remaining groups and (b) the greedy solution as an upper bound on
    the distortion. Among optimal assignments it returns one of least cost.

    Args:
        costs: [L, C] non-negative integer-valued cost of each choice.
        dists: [L, C] distortion of each choice.
        budget: total cost allowed.

    Returns:
        [L] index of the chosen column per group, or None if infeasible.
    """
    costs = np.asarray(costs, dtype=np.float64)
    dists = np.asarray(dists, dtype=np.float64)
    num_groups, num_choices = costs.shape
    min_rest = np.concatenate([np.cumsum(costs.min(1)[::-1])[::-1], [0.0]])
    if min_rest[0] > budget:
        return None
    greedy = allocate_greedy(costs, dists, budget)
    upper = float(dists[np.arange(num_groups), greedy].sum())
    min_dist_rest = np.concatenate([np.cumsum(dists.min(1)[::-1])[::-1], [0.0]])
    tol = 1e-12 * max(abs(upper), 1.0)

    state_cost = np.zeros(1)
    state_dist = np.zeros(1)
    parents, picks = [], []
    for g in range(num_groups):
        new_cost = (state_cost[:, None] + costs[g][None, :]).ravel()  # [m*C]
        new_dist = (state_dist[:, None] + dists[g][None, :]).ravel()
        parent = np.repeat(np.arange(state_cost.size), num_choices)
        pick = np.tile(np.arange(num_choices), state_cost.size)
        ok = (new_cost + min_rest[g + 1] <= budget) & (
            new_dist + min_dist_rest[g + 1] <= upper + tol
        )
        new_cost, new_dist, parent, pick = new_cost[ok], new_dist[ok], parent[ok], pick[ok]
        order = np.lexsort((new_dist, new_cost))  # by cost, then distortion
        new_cost, new_dist = new_cost[order], new_dist[order]
        parent, pick = parent[order], pick[order]
        # Pareto: keep a state only if strictly better than every cheaper one.
        best_before = np.concatenate([[np.inf], np.minimum.accumulate(new_dist)[:-1]])
        keep = new_dist < best_before
        state_cost, state_dist = new_cost[keep], new_dist[keep]
        parents.append(parent[keep])
        picks.append(pick[keep])
    # least distortion; among ties the cheapest (states are sorted by cost).
    best = int(np.argmin(state_dist))
    choice = np.empty(num_groups, dtype=np.int64)
    for g in range(num_groups - 1, -1, -1):
        choice[g] = picks[g][best]
        best = int(parents[g][best])
    return choice
