"""Size accounting: budgets and the report measured from weights."""

import math

import keras
import numpy as np
import pytest

from sqjl_tf import budget


def test_budget_bits_formula():
    sizes = [500, 25000, 400000, 5000]
    expected = sum(3 * math.ceil(0.02 * n) for n in sizes)
    assert budget.budget_bits(sizes, 0.02, 3) == expected
    assert budget.budget_bits([7], 0.5, 2.5) == 2.5 * 4


@pytest.mark.parametrize(
    "nnz_budget, bit_budget, name",
    [(0, 3, "nnz_budget"), (1.3, 3, "nnz_budget"), (float("nan"), 3, "nnz_budget"),
     (0.1, 0.5, "bit_budget"), (0.1, 9, "bit_budget"), (0.1, float("inf"), "bit_budget")],
)
def test_budget_bits_rejects_out_of_range(nnz_budget, bit_budget, name):
    with pytest.raises(ValueError, match=f"Invalid value for argument `{name}`. Received: "):
        budget.budget_bits([10], nnz_budget, bit_budget)


def test_rates():
    assert budget.nominal_rate(0.0054, 3) == pytest.approx(1975.3, rel=1e-3)
    assert budget.nnz_budget_for_rate(100, 4) == pytest.approx(0.08)
    with pytest.raises(ValueError, match="compression_rate"):
        budget.nnz_budget_for_rate(2, 4)


def test_layer_bits():
    assert [budget.layer_bits(d) for d in (0, 1, 2, 3, 4, 5, 256, 257)] == [0, 1, 1, 2, 2, 3, 8, 32]


def test_compression_report_measures_weights():
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(8), keras.layers.Dense(2)])
    k1 = np.zeros((10, 8), np.float32)
    k1[0, :4] = [0.5, -0.5, 0.5, 1.0]  # 4 nonzeros, 3 levels -> 2 bits
    k2 = np.zeros((8, 2), np.float32)
    k2[1, 1] = 2.0  # 1 nonzero, 1 level -> 1 bit
    model.layers[0].kernel.assign(k1)
    model.layers[1].kernel.assign(k2)
    report = budget.compression_report(model, budget_bits=9)
    assert [(s.nnz, s.distinct, s.bits) for s in report.layers] == [(4, 3, 2), (1, 1, 1)]
    assert report.size_bits == 9
    assert report.compression_rate == pytest.approx(32 * 96 / 9)
    assert report.within_budget is True
    assert budget.compression_report(model, budget_bits=8).within_budget is False
    assert "OVER" in str(budget.compression_report(model, budget_bits=8))
    assert report.as_dict()["layers"][0]["nnz"] == 4
    assert report.budget_used == 1.0 and "100% of it used" in str(report)
    assert budget.compression_report(model, budget_bits=18).budget_used == 0.5
