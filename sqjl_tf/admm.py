"""ADMM state of a compression run (docs/ALGORITHM.md section 2), independent of Keras's hooks.

:class:`ADMMState` owns, for every compressible kernel W of a model, the
duplicate V and the scaled dual U (``tf.Variable``s created under the model's
distribution strategy), the current bit widths and nonzero counts, and the
schedule position. It runs the projections at the right moments; the Keras
callback (``callback.ADMMCallback``) and a custom training loop both drive it
through the same four calls::

    state = ADMMState(ADMMConfig(nnz_budget=0.02, bit_budget=3), model)
    state.start()                      # projections once before the first batch
    for epoch in range(epochs):
        for batch in data:
            strategy.run(train_step, (batch,))   # optimizer: ADMMOptimizer
            state.after_batches(1)
        state.end_epoch()
    compressed = state.finalized_model()
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from sqjl_tf import projections
from sqjl_tf._usage import invalid_argument
from sqjl_tf.budget import MAX_BITS, budget_bits
from sqjl_tf.guards import NonFiniteError
from sqjl_tf.layers import CompressibleKernel, compressible_kernels

MODES = ("joint", "prune", "quant")
IMPORTANCES = ("magnitude", "fisher", "lamp")
FISHER_DECAY = 0.99  # moving average of squared gradients, about the last 100 steps
PRUNE_BITS = 32  # b_l in prune-only mode: the weights stay float32


@dataclasses.dataclass(frozen=True)
class ADMMConfig:
    """Options of an ADMM compression run (the reference's flags).

    Attributes:
        nnz_budget: fraction of nonzeros kept, in (0, 1] (ignored by ``quant``).
        bit_budget: average bits per kept weight, in [1, 8] (ignored by ``prune``).
        rho: ADMM penalty rho > 0 (its value at the start; see ``rho_growth``).
        projint: batches between sparse projections (0: once per epoch).
        dualint: batches between quantization projections and dual updates
            (0: once per epoch); a multiple of ``projint``.
        mode: "joint" (prune and quantize), "prune" (prune only, float32
            weights) or "quant" (quantize only, no pruning, no zero centre).
        bwlb: lowest bit width a layer may get.
        fixedbits: keep ``floor(bit_budget)`` bits in every layer.
        bits_epoch: after this many epochs the bit widths stop changing
            (None: never frozen).
        prox: proximal primal update (True) or the augmented term's gradient.
        importance: value of a weight in the sparse projection: "magnitude"
            (w^2, the paper) or "fisher" (w^2 times the moving average of its
            squared gradient; an extension, see ``sparse_projection``), or
            "lamp" (each layer's values divided by their tail sums, so that
            every layer's largest weight scores 1: the ranking no longer
            follows how the network spreads its scale over its layers; an
            extension, see ``projections.layer_normalized_importance``).
        rho_growth: factor applied to rho at the end of every epoch (1: constant
            rho, the reference). The scaled duals are divided by it at the same
            time, so the unscaled multipliers rho * U carry over. An extension
            (the "increasing penalty" of ADMM pruning papers): W ends nearer V
            (a smaller residual). On Fashion-MNIST it did not raise the
            finalised accuracy (README).
        unit_floor: a layer that the sparse projection's ranking leaves with
            fewer nonzeros than output units keeps the largest weight feeding
            each unit, so no layer is ever pruned to zero (an extension; False
            gives the reference's plain global ranking, which can).
    """

    nnz_budget: float = 1.0
    bit_budget: float = 8.0
    rho: float = 1e-3
    projint: int = 0
    dualint: int = 0
    mode: str = "joint"
    bwlb: int = 1
    fixedbits: bool = False
    bits_epoch: Optional[int] = None
    prox: bool = True
    importance: str = "magnitude"
    rho_growth: float = 1.0  # after the reference's fields: positional construction keeps working
    unit_floor: bool = True

    def __post_init__(self):
        def bad(name, value, expected):
            raise invalid_argument(name, value, expected)

        def number(value) -> float:  # NaN for what is not a real number
            if isinstance(value, bool):
                return math.nan
            try:
                return float(value)
            except (TypeError, ValueError):
                return math.nan

        if self.mode not in MODES:
            bad("mode", self.mode, f"one of {', '.join(MODES)}")
        if self.importance not in IMPORTANCES:
            bad("importance", self.importance, f"one of {', '.join(IMPORTANCES)}")
        if not 0 < number(self.nnz_budget) <= 1:
            bad("nnz_budget", self.nnz_budget, "a float in (0, 1]")
        if not 1 <= number(self.bit_budget) <= MAX_BITS:
            bad("bit_budget", self.bit_budget, f"a number in [1, {MAX_BITS}]")
        if not (math.isfinite(number(self.rho)) and number(self.rho) > 0):
            bad("rho", self.rho, "a finite float > 0")
        if not (math.isfinite(number(self.rho_growth)) and number(self.rho_growth) >= 1):
            bad("rho_growth", self.rho_growth, "a finite float >= 1 (1: constant rho)")
        for name in ("projint", "dualint"):
            value = getattr(self, name)
            if not (isinstance(value, (int, np.integer)) and not isinstance(value, bool)
                    and value >= 0):
                bad(name, value, "an integer >= 0 (0: once per epoch)")
        if (self.projint == 0) != (self.dualint == 0) or (
            self.projint and self.dualint % self.projint
        ):
            bad("dualint", self.dualint, f"a multiple of projint={self.projint} (0 if projint is 0)")
        if not (isinstance(self.bwlb, (int, np.integer)) and 1 <= self.bwlb <= MAX_BITS):
            bad("bwlb", self.bwlb, f"an integer in [1, {MAX_BITS}]")
        if self.mode == "joint" and self.bwlb > self.bit_budget:
            bad("bwlb", self.bwlb, f"an integer <= bit_budget={self.bit_budget}")
        if self.bits_epoch is not None and not (
            isinstance(self.bits_epoch, (int, np.integer)) and self.bits_epoch >= 0
        ):
            bad("bits_epoch", self.bits_epoch, "None or an integer >= 0")

    @property
    def initial_bits(self) -> int:
        return PRUNE_BITS if self.mode == "prune" else int(math.floor(self.bit_budget))

    def budget(self, sizes: Sequence[int]) -> float:
        """The budget S in bits for layers of the given sizes."""
        if self.mode == "prune":
            return budget_bits(sizes, self.nnz_budget, 1.0) * PRUNE_BITS
        if self.mode == "quant":
            return budget_bits(sizes, 1.0, self.bit_budget)
        return budget_bits(sizes, self.nnz_budget, self.bit_budget)


class ADMMState(tf.Module):
    """Duplicate and dual variables, bit widths and schedule of one ADMM run.

    Args:
        config: the run's :class:`ADMMConfig`.
        model: a built Keras model; its compressible kernels are W.
        predicate: optional ``f(layer, variable) -> bool`` choosing the kernels.

    Raises:
        ValueError: if the model has no compressible kernel, or the budget is
            too small for one weight per layer at ``bwlb`` bits.
    """

    def __init__(self, config: ADMMConfig, model, predicate: Optional[Callable] = None):
        super().__init__(name="admm_state")
        self.config = config
        self._kernels: List[CompressibleKernel] = compressible_kernels(model, predicate)
        if not self._kernels:
            raise ValueError(
                "Invalid value for argument `model`. Received: a model with no compressible "
                "kernel. Expected Dense/Conv/EinsumDense layers (or a predicate that selects some)."
            )
        sizes = [k.size for k in self._kernels]
        self.budget_bits = config.budget(sizes)
        self._check_floor_fits(sizes)
        self._normalization = following_normalization(model, self._kernels)
        strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
        self.strategy = strategy
        num = len(sizes)
        with strategy.scope():
            self.duplicates = []
            self.duals = []
            if config.mode != "prune":
                for k in self._kernels:
                    name = k.name.replace("/", "_")
                    self.duplicates.append(
                        tf.Variable(tf.zeros(k.variable.shape), trainable=False, name=f"V_{name}")
                    )
                    self.duals.append(
                        tf.Variable(tf.zeros(k.variable.shape), trainable=False, name=f"U_{name}")
                    )
            # Moving averages of squared gradients (importance="fisher"), fed by
            # ADMMOptimizer; MEAN aggregation averages the replicas' writes.
            self.fisher = []
            if config.importance == "fisher" and config.mode != "quant":
                for k in self._kernels:
                    self.fisher.append(tf.Variable(
                        tf.zeros(k.variable.shape), trainable=False,
                        name=f"F_{k.name.replace('/', '_')}",
                        aggregation=tf.VariableAggregation.MEAN,
                    ))
            self.bits = tf.Variable(
                tf.fill([num], config.initial_bits), trainable=False, name="bits", dtype=tf.int32
            )
            self.nnz = tf.Variable(
                tf.constant(sizes, tf.int64), trainable=False, name="nnz"
            )
            self.residuals = tf.Variable(tf.zeros([num], tf.float64), trainable=False, name="residuals")
            self.rho = tf.Variable(float(config.rho), dtype=tf.float32, trainable=False, name="rho")
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
            self.started = tf.Variable(False, trainable=False, name="started")
        self._index = {id(k.variable): i for i, k in enumerate(self._kernels)}
        self._index_by_path = {k.variable.path: i for i, k in enumerate(self._kernels)}

    def _trackable_children(self, save_type="checkpoint", **kwargs):
        """What a ``tf.train.Checkpoint`` of this object holds: every variable it owns (alone
        or in a list), not the layers and kernels it refers to (the model's checkpoint has them)."""
        children = super()._trackable_children(save_type, **kwargs)
        return {name: child for name, child in children.items()
                if isinstance(child, tf.Variable) or (isinstance(child, list) and all(
                    isinstance(v, tf.Variable) for v in child))}

    def _check_floor_fits(self, sizes: List[int]) -> None:
        """The budget must pay for the floor at the cheapest width, else no training starts."""
        config = self.config
        if config.mode == "quant":
            return
        cheapest = config.bwlb if config.mode == "joint" else PRUNE_BITS
        if config.unit_floor:
            weights = sum(min(k.num_units, k.size) for k in self._kernels)
            what = "one weight per output unit of every layer"
        else:
            weights, what = len(sizes), "one weight per layer"
        floor = weights * cheapest
        if self.budget_bits < floor:
            needed = floor / (self.budget_bits / float(config.nnz_budget))
            raise ValueError(
                f"Invalid value for argument `nnz_budget`. Received: {config.nnz_budget}. "
                f"Expected a budget that keeps {what} ({weights} weights at {cheapest} bits "
                f"= {floor} bits); this model's budget is {self.budget_bits:.0f} bits. Use "
                f"nnz_budget >= {needed:.4g}, or compress fewer layers (predicate)."
            )

    # ---------------------------------------------------------------- queries
    @property
    def kernels(self) -> List[CompressibleKernel]:
        return list(self._kernels)

    @property
    def sizes(self) -> List[int]:
        return [k.size for k in self._kernels]

    def index_of(self, variable) -> Optional[int]:
        """Position of ``variable`` among the compressed kernels, or None."""
        found = self._index.get(id(variable))
        if found is None and hasattr(variable, "path"):
            found = self._index_by_path.get(variable.path)
        return found

    def _w(self) -> List[np.ndarray]:
        """The kernels W as NumPy arrays.

        Raises:
            NonFiniteError: if a kernel holds NaN or inf (training diverged):
                the projections are never run on it.
        """
        weights = [np.asarray(k.variable.numpy(), np.float32) for k in self._kernels]
        for k, w in zip(self._kernels, weights):
            if not np.all(np.isfinite(w)):
                raise NonFiniteError(f"the weight `{k.name}` holds NaN/inf")
        return weights

    @property
    def current_bits(self) -> List[int]:
        return [int(b) for b in self.bits.numpy()]

    @property
    def current_nnz(self) -> List[int]:
        return [int(n) for n in self.nnz.numpy()]

    @property
    def bits_frozen(self) -> bool:
        c = self.config
        return c.fixedbits or (c.bits_epoch is not None and int(self.epoch.numpy()) >= c.bits_epoch)

    def _importance(self, weights: List[np.ndarray]) -> Optional[List[np.ndarray]]:
        """The sparse projection's importance factors (None: plain w^2).

        * A kernel followed by a BatchNormalization layer is ranked by its
          effective weights. The normalization divides each output unit by its
          standard deviation, ``||w_unit|| * s`` for inputs of scale ``s`` (BN
          and activation outputs, alike across such layers), and multiplies it
          by ``gamma``: so w^2 is multiplied by ``gamma^2 / ||w_unit||^2``, and
          the kernel's own scale, which does not change what the pair
          computes, no longer decides how many weights it keeps. The estimate
          needs no trained running statistics, so it holds from the first
          projection.
        * With ``importance="fisher"``, once gradients were seen, the moving
          average of the squared gradient multiplies it too; a small floor
          (1e-6 of the mean) keeps weights whose gradient vanished (dead units)
          rankable: they go last, but fill the budget if it allows.
        * With ``importance="lamp"``, each layer's values (BN-aware where
          that applies) are divided by their tail sums (LAMP): every layer's
          largest weight scores 1, whatever the layer's scale.
        """
        factors = None
        if self._normalization:
            factors = [np.ones(w.shape, np.float32) for w in weights]
            for i, norm in self._normalization.items():
                factors[i] = _normalized_unit_factor(weights[i], self._kernels[i], norm)
        if self.config.importance == "lamp":
            return projections.layer_normalized_importance(weights, factors)
        if not self.fisher or int(self.step.numpy()) == 0:
            return factors
        fisher = [f.numpy() for f in self.fisher]
        mean = sum(float(np.sum(f, dtype=np.float64)) for f in fisher) / sum(f.size for f in fisher)
        floor = np.float32(1e-6 * mean if mean > 0 else 1.0)
        fisher = [f + floor for f in fisher]
        return fisher if factors is None else [f * g for f, g in zip(fisher, factors)]

    def _project_sparse(self, weights: List[np.ndarray]):
        """The sparse projection, with the unit floor where a layer needs it.

        The floor binds only on layers that the plain ranking leaves with
        fewer nonzeros than output units: those keep the largest weight of
        each unit, and the rest of the budget is ranked again (until no other
        layer falls below its unit count). A layer the ranking already gives
        enough weights is left as the ranking chose, so where no layer starves
        the projection is exactly the reference's.
        """
        importance = self._importance(weights)
        bits, budget = self.current_bits, self.budget_bits
        projected, nnz = projections.sparse_projection(weights, bits, budget, importance)
        if not self.config.unit_floor:
            return projected, nnz
        units = [k.num_units for k in self._kernels]
        floors = None
        forced = set()
        while True:
            starving = {i for i, (n, u) in enumerate(zip(nnz, units))
                        if n < u and i not in forced}
            if not starving:
                return projected, nnz
            forced |= starving
            if floors is None:
                floors = projections.unit_floor_masks(
                    weights, [k.unit_axes for k in self._kernels], importance)
            keep = [f if i in forced else np.zeros(f.shape, bool) for i, f in enumerate(floors)]
            projected, nnz = projections.sparse_projection(
                weights, bits, budget, importance=importance, keep=keep)

    def accumulate_fisher(self, index: int, grad) -> None:
        """F <- d F + (1 - d) grad^2 for kernel ``index`` (called by the optimizer)."""
        f = self.fisher[index]
        f.assign(FISHER_DECAY * f + (1.0 - FISHER_DECAY) * tf.square(tf.cast(grad, f.dtype)))

    # ------------------------------------------------------------- the steps
    def sparse_step(self) -> None:
        """W <- Proj_sparse(W; current bits, S), in place (not in quant mode)."""
        weights = self._w()
        if self.config.mode == "quant":
            self.nnz.assign([w.size for w in weights])
            return
        projected, nnz = self._project_sparse(weights)
        for k, p in zip(self._kernels, projected):
            k.variable.assign(p)
        self.nnz.assign(nnz)

    def dual_step(self) -> None:
        """V, b <- Proj_quant(W + U; nnz of W, S); U <- U + W - V; residuals."""
        if self.config.mode == "prune":
            return
        weights = self._w()
        duals = [u.numpy() for u in self.duals]
        targets = [w + u for w, u in zip(weights, duals)]
        nnz = self.current_nnz
        reserve_zero = self.config.mode == "joint"
        if self.bits_frozen:
            bits = self.current_bits  # fixed: never changed, even if fewer levels are used
            v, _ = projections.quantize_with_bits(targets, bits, reserve_zero)
        else:
            v, bits = projections.quantization_projection(
                targets,
                nnz,
                self.budget_bits,
                min_bits=self.config.bwlb if self.config.mode == "joint" else 1,
                max_bits=MAX_BITS,
                reserve_zero=reserve_zero,
            )
        residuals = []
        for i, (w, vi, u) in enumerate(zip(weights, v, duals)):
            self.duplicates[i].assign(vi)
            self.duals[i].assign(u + (w - vi))
            residuals.append(float(np.sum((w.astype(np.float64) - vi) ** 2)))
        self.bits.assign(bits)
        self.residuals.assign(residuals)

    def start(self) -> None:
        """Runs both projections once before the first batch (no-op on resume)."""
        if bool(self.started.numpy()):
            return
        self.sparse_step()
        self.dual_step()
        self.started.assign(True)
        logging.info(
            "ADMM start: budget %.0f bits (%d layers), bits %s, nnz %s",
            self.budget_bits, len(self._kernels), self.current_bits, self.current_nnz,
        )

    def after_batches(self, num_batches: int = 1) -> None:
        """Advances the schedule by ``num_batches`` and runs what falls due."""
        before = int(self.step.numpy())
        after = before + int(num_batches)
        self.step.assign(after)
        c = self.config
        if c.projint and after // c.projint > before // c.projint:
            self.sparse_step()
        if c.dualint and after // c.dualint > before // c.dualint:
            self.dual_step()

    def end_epoch(self) -> Dict[str, float]:
        """Runs the once-per-epoch projections and returns the epoch's ADMM logs."""
        if self.config.projint == 0:
            self.sparse_step()
        if self.config.dualint == 0:
            self.dual_step()
        logs = self.logs()  # rho as this epoch used it
        self._grow_rho()
        self.epoch.assign_add(1)
        return logs

    def _grow_rho(self) -> None:
        """rho <- rho * growth; U <- U / growth (the multipliers rho * U unchanged)."""
        growth = float(self.config.rho_growth)
        if growth == 1.0 or not self.duals:
            return
        self.rho.assign(self.rho * growth)
        for u in self.duals:
            u.assign(u / growth)

    # ----------------------------------------------------------- finalising
    def sparse_weights(self) -> List[np.ndarray]:
        """The kernels W pruned by the sparse projection with the current bits, not quantized.

        The first half of :meth:`finalized_weights` (W itself in "quant" mode).
        The variables are not changed.
        """
        weights = self._w()
        if self.config.mode == "quant":
            return weights
        weights, _ = self._project_sparse(weights)
        return weights

    def finalized_weights(self) -> List[np.ndarray]:
        """The kernels as they would ship: sparse-projected, then quantized.

        Each W_l is pruned by the sparse projection with the current bits (so
        the budget holds) and quantized with its own b_l by the codebook step
        (zeros stay zero; a kept weight nearest the zero centre becomes zero).
        The variables are not changed.
        """
        weights = self.sparse_weights()
        mode = self.config.mode
        if mode == "prune":
            return weights
        # The zero centre stays (2^b nonzero centres and a free zero): codebooks over
        # the nonzeros only keep every weight the budget paid for, but were measured
        # worse (LeNet-5 at ~533x: 87.66% against 88.90%, docs/ALGORITHM.md 8.6).
        quantized, _ = projections.quantize_with_bits(weights, self.current_bits, mode == "joint")
        return quantized

    def finalize_in_place(self) -> List[np.ndarray]:
        """Overwrites every kernel with its finalised value.

        Returns:
            The kernels' values before, for :meth:`restore_kernels` (to measure the
            finalised model in the middle of training).
        """
        saved = [np.array(k.variable.numpy()) for k in self._kernels]
        for k, w in zip(self._kernels, self.finalized_weights()):
            k.variable.assign(w)
        return saved

    def restore_kernels(self, saved: Sequence[np.ndarray]) -> None:
        """Puts back the kernel values :meth:`finalize_in_place` returned."""
        for k, w in zip(self._kernels, saved):
            k.variable.assign(w)

    def logs(self) -> Dict[str, float]:
        """Scalars for Keras logs: residuals, rate, and bits/nnz per layer."""
        bits, nnz, sizes = self.current_bits, self.current_nnz, self.sizes
        size = sum(b * n for b, n in zip(bits, nnz))
        out = {
            "admm_residual": float(np.sum(self.residuals.numpy())),
            "compression_rate": 32.0 * sum(sizes) / size if size else float("inf"),
            "size_bits": float(size),
            "budget_bits": float(self.budget_bits),
            "nnz": float(sum(nnz)),
            "rho": float(self.rho.numpy()),
        }
        for k, b, n, r in zip(self._kernels, bits, nnz, self.residuals.numpy()):
            tag = k.name
            out[f"bits/{tag}"] = float(b)
            out[f"nnz/{tag}"] = float(n)
            out[f"density/{tag}"] = float(n) / k.size
            out[f"residual/{tag}"] = float(r)
        return out

    # --------------------------------------------------------- serialisation


# ------------------------------------------------------ normalization folding
_NORMALIZATIONS = ("BatchNormalization",)
_FOLDABLE = ("kernel", "pointwise_kernel", "depthwise_kernel")


def following_normalization(model, kernels: List[CompressibleKernel]) -> Dict[int, object]:
    """``{kernel index: the BatchNormalization layer fed by its layer}`` (graph models).

    Found through the normalization layers' inbound nodes, so it covers
    Functional and Sequential models, nested ones included; a subclassed
    model's call graph is not known and gets no folding.
    """
    from sqjl_tf.layers import _iter_layers

    by_layer: Dict[int, List[int]] = {}
    for i, k in enumerate(kernels):
        if k.name.split("/")[-1] in _FOLDABLE:
            by_layer.setdefault(id(k.layer), []).append(i)
    found: Dict[int, object] = {}
    for layer in _iter_layers(model):
        if type(layer).__name__ not in _NORMALIZATIONS or not getattr(layer, "built", False):
            continue
        for node in getattr(layer, "_inbound_nodes", []):
            for tensor in getattr(node, "input_tensors", []):
                history = getattr(tensor, "_keras_history", None)
                producer = getattr(history, "operation", None)
                for i in by_layer.get(id(producer), []):
                    channels = int(layer.moving_variance.shape[0])
                    if kernels[i].num_units == channels:
                        found[i] = layer
    return found


def _normalized_unit_factor(w: np.ndarray, kernel: CompressibleKernel, norm) -> np.ndarray:
    """``gamma^2 / ||w_unit||^2`` per output unit of ``kernel``, broadcast to its shape."""
    axes = tuple(a for a in range(w.ndim) if a not in kernel.unit_axes)
    energy = np.sum(np.square(w, dtype=np.float64), axis=axes, keepdims=True)  # per unit
    gamma_sq = np.ones(kernel.num_units)
    if getattr(norm, "gamma", None) is not None:
        gamma_sq = np.square(np.asarray(norm.gamma.numpy(), np.float64))
    gamma_sq = _unit_broadcast(gamma_sq.astype(np.float32), kernel)
    tiny = 1e-12 * max(float(np.mean(energy)), 1e-30)
    factor = gamma_sq / np.maximum(energy, tiny)
    return np.where(np.isfinite(factor), factor, 0.0).astype(np.float32)


def _unit_broadcast(per_unit: np.ndarray, kernel: CompressibleKernel) -> np.ndarray:
    """A [units] vector laid out along ``kernel``'s unit axes, broadcast to its shape."""
    shape = [int(d) for d in kernel.variable.shape]
    layout = [1] * len(shape)
    for ax in kernel.unit_axes:
        layout[ax] = shape[ax]
    return np.broadcast_to(per_unit.reshape(layout), shape).astype(np.float32)
