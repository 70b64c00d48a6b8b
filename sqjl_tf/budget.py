"""Size accounting: the budget in bits and the compression measured from weights.

docs/ALGORITHM.md section 1. A compressed layer costs ``b_l * nnz_l`` bits (the
paper's metric); the budget from flags is ``S = sum_l bit_budget *
ceil(nnz_budget * n_l)``, and the compression rate reported is
``32 * sum_l n_l / sum_l b_l * nnz_l`` with b_l and nnz_l measured on the final
weights (b_l = ceil(log2(distinct nonzero values)), at least 1).

Example:
    >>> budget_bits([500, 25000, 400000, 5000], nnz_budget=0.02, bit_budget=3)
    25830.0
    >>> round(nominal_rate(0.0054, 3))
    1975
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

MAX_BITS = 8


def _check_fraction(nnz_budget) -> float:
    value = float(nnz_budget)
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ValueError(
            "Invalid value for argument `nnz_budget`. "
            f"Received: {nnz_budget}. Expected a float in (0, 1]."
        )
    return value


def _check_bit_budget(bit_budget) -> float:
    value = float(bit_budget)
    if not (math.isfinite(value) and 1.0 <= value <= MAX_BITS):
        raise ValueError(
            "Invalid value for argument `bit_budget`. "
            f"Received: {bit_budget}. Expected a number in [1, {MAX_BITS}]."
        )
    return value


def budget_bits(sizes: Sequence[int], nnz_budget: float, bit_budget: float) -> float:
    """The size budget S in bits.

    Args:
        sizes: number of weights n_l of each compressible layer.
        nnz_budget: fraction of nonzeros kept, in (0, 1].
        bit_budget: average bits per kept weight, in [1, 8] (may be fractional).

    Returns:
        ``S = sum_l bit_budget * ceil(nnz_budget * n_l)``.

    Raises:
        ValueError: if a budget is out of range or a size is not positive.
    """
    nnz_budget = _check_fraction(nnz_budget)
    bit_budget = _check_bit_budget(bit_budget)
    total = 0.0
    for n in sizes:
        if int(n) <= 0:
            raise ValueError(
                f"Invalid value for argument `sizes`. Received: {n}. Expected positive sizes."
            )
        total += bit_budget * math.ceil(nnz_budget * int(n))
    return total


def nominal_rate(nnz_budget: float, bit_budget: float) -> float:
    """The compression rate a budget promises: ``32 / (nnz_budget * bit_budget)``."""
    return 32.0 / (_check_fraction(nnz_budget) * _check_bit_budget(bit_budget))


def nnz_budget_for_rate(rate: float, bit_budget: float) -> float:
    """The ``nnz_budget`` that gives compression ``rate`` at ``bit_budget`` bits.

    Args:
        rate: target compression ratio against float32 (e.g. 100 for 100x).
        bit_budget: average bits per kept weight.

    Returns:
        ``32 / (rate * bit_budget)``.

    Raises:
        ValueError: if ``rate`` is not finite or the result is not in (0, 1]
            (a rate below ``32 / bit_budget`` cannot use every weight).

    Example:
        >>> nnz_budget_for_rate(100, bit_budget=4)
        0.08
    """
    bit_budget = _check_bit_budget(bit_budget)
    value = float(rate)
    if not (math.isfinite(value) and value >= 32.0 / bit_budget):
        raise ValueError(
            "Invalid value for argument `compression_rate`. "
            f"Received: {rate}. Expected a number >= 32 / bit_budget = {32.0 / bit_budget:g}."
        )
    return 32.0 / (value * bit_budget)


FLOAT_BITS = 32


def layer_bits(num_distinct: int) -> int:
    """Bits per nonzero of a layer with ``num_distinct`` distinct nonzero values.

    ``ceil(log2(num_distinct))`` (at least 1) for a quantized layer; a layer
    with more than ``2**8`` levels is not quantized and stays float32 (32 bits);
    an empty layer costs 0.
    """
    if num_distinct <= 0:
        return 0
    if num_distinct > 2**MAX_BITS:
        return FLOAT_BITS
    return max(1, math.ceil(math.log2(num_distinct)))


@dataclasses.dataclass(frozen=True)
class LayerStats:
    """Measured size of one compressible kernel.

    Attributes:
        name: variable path.
        shape: kernel shape.
        size: number of weights n_l.
        nnz: number of nonzeros.
        distinct: number of distinct nonzero values.
        bits: ``ceil(log2(distinct))`` (at least 1; 0 if the layer is empty;
            32 if it has more than 256 levels: float32).
    """

    name: str
    shape: tuple
    size: int
    nnz: int
    distinct: int
    bits: int

    @property
    def density(self) -> float:
        return self.nnz / self.size if self.size else 0.0

    @property
    def size_bits(self) -> int:
        return self.bits * self.nnz


def measure(name: str, array) -> LayerStats:
    """Measures nnz, distinct nonzero values and bits of one array."""
    arr = np.asarray(array.numpy() if hasattr(array, "numpy") else array)
    nonzero = arr[arr != 0]
    distinct = int(np.unique(nonzero).size)
    return LayerStats(
        name=name,
        shape=tuple(int(d) for d in arr.shape),
        size=int(arr.size),
        nnz=int(nonzero.size),
        distinct=distinct,
        bits=layer_bits(distinct),
    )


@dataclasses.dataclass(frozen=True)
class CompressionReport:
    """The size of a model measured from its weights alone.

    Attributes:
        layers: per-kernel :class:`LayerStats`.
        budget_bits: the budget the model was compressed for, if known.
    """

    layers: List[LayerStats]
    budget_bits: Optional[float] = None
    file: Optional[object] = None  # export.FileSizeBreakdown, when asked for
    left_out: Tuple[Tuple[str, int], ...] = ()  # (path, size) of weights outside the budget

    @property
    def left_out_weights(self) -> int:
        """Parameters outside the budget (biases, normalization, unselected weights)."""
        return sum(n for _, n in self.left_out)

    @property
    def budget_coverage(self) -> float:
        """The share of all parameters that the budget covers (1.0 if none is left out)."""
        total = self.total_weights + self.left_out_weights
        return self.total_weights / total if total else 1.0

    @property
    def total_weights(self) -> int:
        return sum(s.size for s in self.layers)

    @property
    def total_nnz(self) -> int:
        return sum(s.nnz for s in self.layers)

    @property
    def size_bits(self) -> int:
        """``sum_l b_l * nnz_l``: the paper's size metric."""
        return sum(s.size_bits for s in self.layers)

    @property
    def compression_rate(self) -> float:
        """``32 * sum n_l / sum b_l nnz_l`` (inf for an all-zero model)."""
        bits = self.size_bits
        return 32.0 * self.total_weights / bits if bits else math.inf

    @property
    def within_budget(self) -> Optional[bool]:
        if self.budget_bits is None:
            return None
        return self.size_bits <= self.budget_bits

    @property
    def budget_used(self) -> Optional[float]:
        """``size_bits / budget_bits``: the share of the budget the weights use."""
        if not self.budget_bits:
            return None
        return self.size_bits / self.budget_bits

    def as_dict(self) -> Dict:
        return {
            "compression_rate": self.compression_rate,
            "size_bits": self.size_bits,
            "budget_bits": self.budget_bits,
            "within_budget": self.within_budget,
            "budget_used": self.budget_used,
            "nnz": self.total_nnz,
            "weights": self.total_weights,
            "layers": [dataclasses.asdict(s) for s in self.layers],
            "left_out_weights": self.left_out_weights,
            "budget_coverage": self.budget_coverage,
            "file": self.file.as_dict() if self.file is not None else None,
        }

    def __str__(self) -> str:
        rows = [f"{'layer':40s} {'shape':>20s} {'density':>8s} {'levels':>6s} {'bits':>4s}"]
        for s in self.layers:
            rows.append(
                f"{s.name[-40:]:40s} {str(s.shape):>20s} {s.density:8.4f} "
                f"{s.distinct:6d} {s.bits:4d}"
            )
        line = (
            f"total: {self.total_nnz}/{self.total_weights} nonzeros, "
            f"{self.size_bits} bits, compression {self.compression_rate:.1f}x"
        )
        if self.budget_bits is not None:
            verdict = "within" if self.within_budget else "OVER"
            line += (f" ({verdict} budget of {self.budget_bits:.0f} bits, "
                     f"{100 * self.budget_used:.0f}% of it used)")
        rows.append(line)
        if self.left_out:
            largest = sorted(self.left_out, key=lambda item: -item[1])[:3]
            rows.append(
                f"left out of the budget (float32): {self.left_out_weights} parameters in "
                f"{len(self.left_out)} weights ({100 * (1 - self.budget_coverage):.1f}% of the "
                f"model), largest: " + ", ".join(f"{n} ({c})" for n, c in largest))
            if self.budget_coverage < 0.5:
                rows.append(f"WARNING: the budget covers only {100 * self.budget_coverage:.1f}% "
                            "of the parameters: the rate above is not the model's.")
        empty = [s.name for s in self.layers if s.nnz == 0]
        if empty:
            rows.append(f"WARNING: {len(empty)} compressed weights are all zero: "
                        + ", ".join(empty[:5]))
        if self.file is not None:
            rows.append(str(self.file))
        return "\n".join(rows)


def compression_report(
    model, budget_bits: Optional[float] = None, predicate=None, file_sizes: bool = False
):
    """Measures a model's compressible kernels from their values alone.

    Args:
        model: a built Keras model (or a list of (name, array) pairs).
        budget_bits: optional budget S; the report then says whether it holds
            (default: the budget a finalised model carries, ``sqjl_budget_bits``).
        predicate: optional layer predicate, as in ``compressible_kernels``.
        file_sizes: also measure the bit-packed file of ``save_compressed``
            (bytes by part, the real rate against dense float32 beside the
            paper's rate); needs every kernel quantized to <= 256 levels.

    Returns:
        A :class:`CompressionReport`.

    Example:
        >>> report = compression_report(model)
        >>> report.compression_rate, report.size_bits
    """
    left_out = ()
    if isinstance(model, (list, tuple)):
        pairs = list(model)
    else:
        from sqjl_tf.layers import compressible_kernels, left_out_weights

        pairs = [(k.name, k.variable) for k in compressible_kernels(model, predicate)]
        left_out = tuple(left_out_weights(model, predicate))
        if budget_bits is None:
            budget_bits = getattr(model, "sqjl_budget_bits", None)
    file = None
    if file_sizes:
        from sqjl_tf.export import file_size_breakdown

        file = file_size_breakdown(model)
    return CompressionReport([measure(n, a) for n, a in pairs], budget_bits, file, left_out)
