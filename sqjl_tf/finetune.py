"""Fine-tuning of an already-compressed model (docs/ALGORITHM.md section 4).

The sparsity mask (``W != 0``) and the bit widths are frozen; each layer keeps a
codebook (:func:`sqjl_tf.projections.codebook` on its nonzeros). Training runs
with every kernel replaced by its quantized value and the gradient goes
straight through to a full-precision copy:

* the callback keeps, per compressible kernel, a full-precision shadow
  ``W_fp`` (a ``tf.Variable``) and makes the model's kernel ``Q(W_fp)``
  (nearest centre; zeros stay zero);
* the optimizer steps the kernel from ``Q(W_fp)`` to ``W'``; at the batch end
  the callback applies that update to the shadow,
  ``W_fp <- mask * (W_fp + W' - Q(W_fp))`` (straight-through), and writes
  ``Q(W_fp)`` back into the kernel;
* a few Lloyd iterations refresh the codebooks about ``refresh_per_epoch``
  times per epoch; at each epoch end Lloyd runs to convergence (the
  reference's rule: relative change of the distortion <= 1e-3, at most 100
  iterations) from the running codebook.

The epoch-end refresh starts from the running codebook, not from the linspace
start of :func:`~sqjl_tf.projections.codebook` as the reference does: a restart
can land on another local optimum, so the model that comes out of the last
epoch would differ from the one the epoch trained and validated. Lloyd from the
running codebook never increases the distortion. Measured on Fashion-MNIST
LeNet-5 at ~2000x (2 epochs from the same ADMM model): 87.06% with the warm
refresh (the last epoch's validation, unchanged) vs 86.00% with the restart
(after 87.05% at validation).

All the per-batch work is one compiled TensorFlow function over the variables
(``tf.searchsorted`` on the centres' midpoints, then a gather), no NumPy round
trip. Between batches the model's kernels are always quantized, so validation
inside ``fit``, checkpoints and the model after ``fit`` are the quantized
model: every kernel has at most ``2**b`` distinct nonzero values, no new
nonzero, so its size ``sum_l b_l * nnz_l`` never exceeds the starting size.

With ``float_epochs=N`` the first N epochs train the kernels in full precision
on their frozen support (no codebook: the order of TFMOT's prune-then-cluster
pipeline), then the codebooks are built by k-means on the trained weights and
the quantized fine-tuning above takes over. ``fit`` ending earlier quantizes at
its end, so the model after ``fit`` always has the frozen widths.

With ``train_centres=True`` the centres themselves are trained by gradient in
the quantized epochs, as TFMOT's clustering does: the optimizer (an
:class:`~sqjl_tf.ADMMOptimizer`) hands each kernel's loss gradient to the
callback, which sums it over the weights of each centre (the centre's exact
gradient, ``dL/dc_k = sum_{i: W_i -> c_k} dL/dW_i``) and steps the centres with
Adam at the optimizer's current learning rate; the Lloyd refreshes, which
would pull the centres back to the weights' means, are off. The weights keep
their straight-through updates, so assignments still move.

With ``prune_to`` (nonzeros per kernel, e.g. the allocation an ADMM run
learned) the support is not frozen at the start but shrinks to those counts by
magnitude during the first ``prune_epochs`` full-precision epochs, on the cubic
schedule of gradual pruning (Zhu & Gupta 2017; TFMOT's ``PolynomialDecay``):
start from ADMM's trained weights W, unpruned, and the allocation ADMM chose is
trained for as TFMOT trains its own. ``prune_epochs=0`` prunes at once.

All the callback's state is in variables it owns (:meth:`checkpoint_variables`:
per kernel the shadow, mask, codebook and centre moments; whether quantizing
has started; the pruning step, counted per batch as TFMOT's ``pruning_step``,
and the start counts; the epochs done), which the trainer saves with each
checkpoint and restores on resuming: a resumed run goes on exactly where the
checkpoint's epoch ended. A ``fit`` from ``initial_epoch`` > 0 with a fresh
callback on a checkpoint's partly pruned weights (no saved state: an older
checkpoint) goes on with the schedule as best it can: the start counts are
recovered by inverting the cubic schedule.

Use ``steps_per_execution=1`` (the default): with N > 1, Keras runs N steps
without callbacks and the N-1 later ones would see unquantized kernels.

Example:
    >>> compressed = cb_admm.finalize()          # or keras.models.load_model(...)
    >>> ft = QuantizedFinetuneCallback()
    >>> compressed.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9),
    ...                    loss=..., metrics=["accuracy"])
    >>> compressed.fit(train, validation_data=val, epochs=5, callbacks=[ft])
    >>> final = ft.finalize()                    # quantized copy, size <= the start
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence, Union

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from sqjl_tf import projections
from sqjl_tf._copy import detach_optimizer, uncompiled_copy
from sqjl_tf._state import variable_property
from sqjl_tf._usage import invalid_argument as _bad
from sqjl_tf.budget import compression_report
from sqjl_tf.distill import Distiller
from sqjl_tf.layers import CompressibleKernel, compressible_kernels
from sqjl_tf.optimizer import _build_before_fit

MAX_BITS = projections.MAX_BITS
_PRUNE_EVERY = 50  # steps between mask updates of the gradual pruning
_DEFAULT_REFRESH_EVERY = 50  # batches between codebook refreshes when fit does not know its steps


def _parse_weightbits(weightbits) -> Optional[List[int]]:
    """Validates ``weightbits`` (a list of ints or the reference's comma string)."""
    if weightbits is None:
        return None
    raw = weightbits
    if isinstance(weightbits, str):
        parts = [p.strip() for p in weightbits.split(",") if p.strip()]
        if not parts:
            return None
        weightbits = parts
    expected = f"integers in [1, {MAX_BITS}] (a list or a comma string), one per layer"
    try:
        values = [float(b) for b in weightbits]
    except (TypeError, ValueError):
        raise _bad("weightbits", raw, expected) from None
    if not values or not all(v == int(v) and 1 <= v <= MAX_BITS for v in values):
        raise _bad("weightbits", raw, expected)
    return [int(v) for v in values]


def _value(variable) -> tf.Variable:
    """The tf.Variable behind a keras.Variable (TF backend)."""
    return variable.value if isinstance(variable, keras.Variable) else variable


def _pad_centres(centres: np.ndarray, length: int) -> np.ndarray:
    """Sorted distinct centres padded to ``length`` by repeating the largest (no effect on Q)."""
    centres = np.unique(np.asarray(centres, np.float32))
    if centres.size == 0:
        centres = np.zeros(1, np.float32)
    pad = np.full(length - centres.size, centres[-1], np.float32)
    return np.concatenate([centres, pad])


def quantize_tf(x: tf.Tensor, centres: tf.Tensor) -> tf.Tensor:
    """TensorFlow version of :func:`sqjl_tf.projections.quantize`.

    Args:
        x: a tensor, any shape.
        centres: 1-D sorted float32 centres (repeated values allowed).

    Returns:
        ``x`` with every nonzero entry replaced by its nearest centre (ties:
        the lower one) and zeros kept at zero.

    Example:
        >>> quantize_tf(tf.constant([0.0, 0.9, -2.0]), tf.constant([-1.0, 0.0, 1.0]))
        <tf.Tensor: ... numpy=array([ 0.,  1., -1.], dtype=float32)>
    """
    x = tf.convert_to_tensor(x, tf.float32)
    flat = tf.reshape(x, [-1])
    mid = 0.5 * (centres[1:] + centres[:-1])
    idx = tf.searchsorted(mid, flat, side="left")
    q = tf.gather(centres, idx)
    return tf.reshape(tf.where(flat != 0, q, tf.zeros_like(q)), tf.shape(x))


def _lloyd(values: tf.Tensor, centres: tf.Tensor, fixed_zero: bool, iterations: int):
    """Lloyd iterations of 1-D k-means on ``values`` from sorted ``centres``."""
    n = tf.shape(centres)[0]
    ones = tf.ones_like(values)
    for _ in range(iterations):
        mid = 0.5 * (centres[1:] + centres[:-1])
        idx = tf.searchsorted(mid, values, side="left")
        sums = tf.math.unsorted_segment_sum(values, idx, n)
        counts = tf.math.unsorted_segment_sum(ones, idx, n)
        new = tf.where(counts > 0, sums / tf.maximum(counts, 1.0), centres)
        if fixed_zero:
            new = tf.where(centres == 0, tf.zeros_like(new), new)
        centres = tf.sort(new)
    return centres


def _distortion(values: tf.Tensor, centres: tf.Tensor) -> float:
    q = quantize_tf(values, centres)
    return float(tf.reduce_sum(tf.square(values - q)))


def _lloyd_to_convergence(values: tf.Tensor, centres: tf.Tensor, fixed_zero: bool,
                          tol: float = 1e-3, max_iter: int = 100) -> tf.Tensor:
    """Lloyd from ``centres`` until the distortion changes by <= ``tol`` (relative).

    Each Lloyd iteration can only lower the distortion (the zero centre, when
    fixed, stays put), so the result is never worse than ``centres``.
    """
    before = _distortion(values, centres)
    for _ in range(max_iter):
        new = _lloyd(values, centres, fixed_zero, 1)
        after = _distortion(values, new)
        if after > before:  # float rounding only; keep the better codebook
            break
        centres, done = new, before - after <= tol * max(before, 1e-30)
        before = after
        if done:
            break
    return centres


@dataclasses.dataclass
class _Slot:
    """Fine-tuning state of one kernel."""

    kernel: CompressibleKernel
    bits: int
    shadow: tf.Variable  # full-precision W, masked
    mask: tf.Variable  # bool, the frozen support
    centres: tf.Variable  # padded sorted codebook, fixed length
    used: Optional[tf.Variable] = None  # number of real centres (the rest repeat the last)
    centre_grad: Optional[tf.Variable] = None  # summed loss gradient per centre (train_centres)
    centre_m: Optional[tf.Variable] = None  # its Adam moments
    centre_v: Optional[tf.Variable] = None


class QuantizedFinetuneCallback(keras.callbacks.Callback):
    """Fine-tunes a compressed model with frozen mask and bit widths (section 4).

    On ``on_train_begin`` (or :meth:`build`) it freezes each compressible
    kernel's support and bit width, builds its codebook and quantizes it; then
    after every batch it applies the optimizer's update to the full-precision
    copy (straight-through), re-applies the mask, and re-quantizes. See the
    module docstring. Calling ``fit`` again continues from the same
    full-precision copy.

    Args:
        weightbits: per-layer bit widths (list of ints in [1, 8] or the
            reference's comma string), in ``compressible_kernels`` order; None:
            each layer's ``ceil(log2(distinct nonzero values))``, at most 8. A
            width above the layer's measured one is lowered to it, so the size
            never grows.
        refresh_per_epoch: Lloyd refreshes of the codebooks per epoch (0: only
            the full refresh at each epoch end).
        lloyd_iters: Lloyd iterations per refresh.
        reserve_zero: keep 0 as a fixed centre (weights may then drop to 0,
            never the reverse); False for quantize-only models.
        predicate: ``f(layer, variable) -> bool`` choosing the kernels, as in
            ``compressible_kernels``.
        float_epochs: epochs of full-precision training on the frozen support
            before the codebooks are built (0: quantized from the start).
        prune_to: nonzeros each kernel ends with (``compressible_kernels``
            order), at most its nonzeros at the start; None: the start
            support is kept.
        prune_epochs: full-precision epochs over which the support shrinks to
            ``prune_to`` (cubic schedule, by magnitude; masks updated about 20
            times over the schedule and at each epoch end); at most
            ``float_epochs``; 0: pruned at once.
        train_centres: train the centres by gradient (Adam at the optimizer's
            learning rate) in the quantized epochs instead of Lloyd
            refreshes; needs the model compiled with an
            :class:`~sqjl_tf.ADMMOptimizer` (it passes the gradients).

    Raises:
        ValueError: on invalid arguments; ``weightbits`` of the wrong length
            is reported by :meth:`build` / ``fit``.

    Example:
        >>> ft = QuantizedFinetuneCallback(weightbits="4,3,3,4")
        >>> model.fit(x, y, epochs=3, callbacks=[ft])
        >>> sqjl_tf.compression_report(ft.finalize()).size_bits <= ft.initial_size_bits
        True
    """

    def __init__(
        self,
        weightbits: Union[None, str, Sequence[int]] = None,
        refresh_per_epoch: int = 20,
        lloyd_iters: int = 3,
        reserve_zero: bool = True,
        predicate: Optional[Callable] = None,
        float_epochs: int = 0,
        train_centres: bool = False,
        prune_to: Optional[Sequence[int]] = None,
        prune_epochs: int = 0,
    ):
        super().__init__()
        self.weightbits = _parse_weightbits(weightbits)
        if not (isinstance(refresh_per_epoch, (int, np.integer)) and refresh_per_epoch >= 0):
            raise _bad("refresh_per_epoch", refresh_per_epoch, "an integer >= 0")
        if not (isinstance(lloyd_iters, (int, np.integer)) and lloyd_iters >= 1):
            raise _bad("lloyd_iters", lloyd_iters, "an integer >= 1")
        if not (isinstance(float_epochs, (int, np.integer)) and float_epochs >= 0):
            raise _bad("float_epochs", float_epochs, "an integer >= 0")
        self.float_epochs = int(float_epochs)
        if prune_to is not None and not all(
                isinstance(n, (int, np.integer)) and n >= 0 for n in prune_to):
            raise _bad("prune_to", prune_to, "a list of integers >= 0, one per kernel")
        if not (isinstance(prune_epochs, (int, np.integer)) and 0 <= prune_epochs <= float_epochs):
            raise _bad("prune_epochs", prune_epochs,
                       f"an integer in [0, float_epochs={float_epochs}] (pruning is done in "
                       "full precision)")
        if prune_epochs and prune_to is None:
            raise _bad("prune_epochs", prune_epochs, "0 without prune_to")
        self.prune_to = None if prune_to is None else [int(n) for n in prune_to]
        self.prune_epochs = int(prune_epochs)
        # The state beyond the slots, in variables (checkpoint_variables): the pruning
        # schedule's start counts (made by build), whether it is done, its step (batches
        # of the pruning phase, TFMOT's pruning_step); whether quantizing has started; the
        # epochs done (0 in a fresh callback: a resumed fit without restored state).
        self._prune_start: Optional[tf.Variable] = None
        self._pruned_flag = tf.Variable(prune_to is None, trainable=False, name="pruned")
        self.prune_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="prune_step")
        self._quantizing = tf.Variable(False, trainable=False, name="quantizing")
        self._epochs_done = tf.Variable(0, dtype=tf.int64, trainable=False, name="epochs_done")
        self._resume_checked = True  # set False by build: the first epoch checks the state
        self.train_centres = bool(train_centres)
        self._centre_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="centre_step")
        self._tapped = None  # the optimizer the gradient tap is registered with
        self._centre_fn = None
        self._slot_of = {}  # kernel path -> its slot, for the gradient tap
        self.refresh_per_epoch = int(refresh_per_epoch)
        self.lloyd_iters = int(lloyd_iters)
        self.reserve_zero = bool(reserve_zero)
        self.predicate = predicate
        self.slots: List[_Slot] = []
        self.initial_size_bits: Optional[int] = None
        self._built_for = None
        self._step_fn = None
        self._refresh_fn = None
        self._float_step_fn = None
        self._batches = 0
        self._last_batch = -1

    # ---------------------------------------------------------------- state
    quantizing = variable_property(
        "_quantizing", bool, "False while the ``float_epochs`` run (a variable: checkpointed).")
    _pruned = variable_property("_pruned_flag", bool)

    @property
    def _prune_from(self) -> List[int]:
        """Nonzeros per kernel at the start of the pruning schedule."""
        return [int(n) for n in self._prune_start.numpy()]

    def checkpoint_variables(self) -> Dict[str, tf.Variable]:
        """All the fine-tuning state, by name, to save with a checkpoint and restore on resuming.

        Per kernel ``i`` (``compressible_kernels`` order): ``i/shadow`` (the
        full-precision weights), ``i/mask``, ``i/centres`` and, with
        ``train_centres``, ``i/used``, ``i/centre_grad``, ``i/centre_m``,
        ``i/centre_v``; then ``quantizing``, ``pruned``, ``prune_step``,
        ``prune_start``, ``centre_step`` and ``epochs``. Restore them after
        :meth:`build` (which sets them from the model: restoring overrides
        that) and before ``fit``; ``epochs`` then equals ``fit``'s
        ``initial_epoch``.

        Returns:
            ``{name: tf.Variable}``.

        Raises:
            RuntimeError: if called before :meth:`build`.

        Example:
            >>> ft.build(model)
            >>> load_checkpoint(path, model, optimizer, variables=ft.checkpoint_variables())
        """
        if self._built_for is None:
            raise RuntimeError("QuantizedFinetuneCallback.checkpoint_variables() called before "
                               "build(): the per-kernel state does not exist yet.")
        out = {}
        for i, s in enumerate(self.slots):
            for name in ("shadow", "mask", "centres", "used", "centre_grad", "centre_m",
                         "centre_v"):
                if getattr(s, name) is not None:
                    out[f"{i}/{name}"] = getattr(s, name)
        out.update(quantizing=self._quantizing, pruned=self._pruned_flag,
                   prune_step=self.prune_step, prune_start=self._prune_start,
                   centre_step=self._centre_step, epochs=self._epochs_done)
        return out

    # ---------------------------------------------------------------- setup
    def _resolve_bits(self, kernels: List[CompressibleKernel]) -> List[int]:
        report = compression_report([(k.name, k.variable) for k in kernels])
        measured = [min(max(s.bits, 1), MAX_BITS) for s in report.layers]
        if self.weightbits is None:
            return measured
        if len(self.weightbits) != len(kernels):
            raise _bad(
                "weightbits",
                self.weightbits,
                f"{len(kernels)} widths, one per compressible kernel "
                f"({', '.join(k.name for k in kernels)})",
            )
        bits = []
        for k, given, have in zip(kernels, self.weightbits, measured):
            if given > have:
                logging.info(
                    "%s: weightbits %d lowered to the %d bits it has (size must not grow).",
                    k.name, given, have,
                )
            bits.append(min(given, have))
        return bits

    def build(self, model: keras.Model) -> List[_Slot]:
        """Freezes masks and widths of ``model``, builds codebooks, quantizes.

        Done by ``fit``; a second call for the same model keeps the current
        full-precision copy.

        Args:
            model: a built, compressed Keras model.

        Returns:
            The per-kernel state.

        Raises:
            ValueError: if the model has no compressible kernel or
                ``weightbits`` does not have one width per kernel.
        """
        if self._built_for is model:
            return self.slots
        kernels = compressible_kernels(model, self.predicate)
        if not kernels:
            raise _bad("model", model.name, "a model with at least one compressible kernel")
        bits = self._resolve_bits(kernels)
        self.initial_size_bits = compression_report(
            [(k.name, k.variable) for k in kernels]
        ).size_bits
        # Codebooks are built here only if quantizing starts now; otherwise
        # start_quantizing builds them from the weights as trained (or pruned) by then.
        codebooks_now = self.float_epochs == 0 and self.prune_to is None
        slots = []
        for k, b in zip(kernels, bits):
            w = np.asarray(keras.ops.convert_to_numpy(k.variable), np.float32)
            length = 2**b + (1 if self.reserve_zero else 0)
            centres = (projections.codebook(w, b, self.reserve_zero) if codebooks_now
                       else np.zeros(1, np.float32))
            zeros = np.zeros(length, np.float32)
            extra = {} if not self.train_centres else dict(
                used=tf.Variable(max(int(np.unique(centres).size), 1), trainable=False,
                                 name="centres_used"),
                centre_grad=tf.Variable(zeros, trainable=False, name="centre_grad"),
                centre_m=tf.Variable(zeros, trainable=False, name="centre_m"),
                centre_v=tf.Variable(zeros, trainable=False, name="centre_v"))
            slots.append(
                _Slot(
                    kernel=k,
                    bits=b,
                    shadow=tf.Variable(w, trainable=False, name="fp_shadow"),
                    mask=tf.Variable(w != 0, trainable=False, name="mask"),
                    centres=tf.Variable(_pad_centres(centres, length), trainable=False,
                                        name="centres"),
                    **extra,
                )
            )
        starts = [int(np.count_nonzero(s.mask.numpy())) for s in slots]
        if self.prune_to is not None and (len(self.prune_to) != len(slots) or any(
                n > m for n, m in zip(self.prune_to, starts))):
            raise _bad("prune_to", self.prune_to,
                       f"{len(slots)} counts, each at most the kernel's nonzeros {starts}")
        self.slots = slots
        self._built_for = model
        self._prune_start = tf.Variable(np.asarray(starts, np.int64), trainable=False,
                                        name="prune_start")
        self._resume_checked = False
        if self.prune_to is not None:
            self._pruned = False
            if self.prune_epochs == 0:
                self._prune(1.0)
                self._set_codebooks()
        self._step_fn = tf.function(self._step_impl, autograph=False)
        self._refresh_fn = tf.function(self._refresh_impl, autograph=False)
        self._float_step_fn = tf.function(self._float_step_impl, autograph=False)
        self._centre_fn = tf.function(self._centre_step_impl, autograph=False)
        self._slot_of = {s.kernel.variable.path: s for s in slots}  # for the gradient tap
        planned = sum(s.bits * n for s, n in zip(slots, self.prune_to or [
            int(np.count_nonzero(s.mask.numpy())) for s in slots]))
        logging.info(
            "Fine-tuning %d kernels, widths %s, start size %d bits, %d bits at those widths%s.",
            len(slots), [s.bits for s in slots], self.initial_size_bits, planned,
            f", {self.float_epochs} epochs in full precision first" if self.float_epochs else "",
        )
        self.quantizing = self.float_epochs == 0
        if self.quantizing:
            self._requantize()
        return slots

    def start_quantizing(self) -> None:
        """Ends the full-precision phase: k-means codebooks of the trained weights, quantize.

        Done by ``fit`` after ``float_epochs`` epochs (or at its end); a no-op
        once quantizing.
        """
        if self.quantizing:
            return
        if not self._pruned:  # fit ended before the pruning schedule did
            self._prune(1.0)
        self._set_codebooks()
        self._centre_step.assign(0)
        self.quantizing = True
        self._requantize()
        logging.info("Fine-tuning: codebooks built from the full-precision weights, quantized.")

    def _prune(self, fraction: float) -> None:
        """Keeps the largest weights of each kernel: ``fraction`` of the way to ``prune_to``."""
        for s, start, target in zip(self.slots, self._prune_from, self.prune_to):
            keep = int(round(target + (start - target) * (1.0 - fraction) ** 3))
            w = s.shadow.numpy()  # masked
            flat = np.abs(w).ravel()
            mask = np.zeros(flat.size, bool)
            if keep > 0:
                mask[np.argpartition(-flat, keep - 1)[:keep]] = True
            mask = mask.reshape(w.shape) & (w != 0)
            s.mask.assign(mask)
            s.shadow.assign(np.where(mask, w, 0).astype(np.float32))
            _value(s.kernel.variable).assign(s.shadow)
        if fraction >= 1.0:
            self._pruned = True
            logging.info("Fine-tuning: pruned to %s nonzeros.", self.prune_to)

    def _set_codebooks(self) -> None:
        """k-means codebooks of the (masked, full-precision) shadows."""
        for s in self.slots:
            w = s.shadow.numpy()
            centres = projections.codebook(w, s.bits, self.reserve_zero)
            s.centres.assign(_pad_centres(centres, int(s.centres.shape[0])))
            if s.used is not None:
                s.used.assign(max(int(np.unique(centres).size), 1))
                for v in (s.centre_grad, s.centre_m, s.centre_v):  # float phase's sums: unused
                    v.assign(tf.zeros_like(v))

    # ------------------------------------------------------------ TF steps
    def _step_impl(self):
        """Straight-through update of every shadow, then re-quantization."""
        for s in self.slots:
            kernel = _value(s.kernel.variable)
            delta = tf.convert_to_tensor(kernel) - quantize_tf(s.shadow, s.centres)
            new = tf.where(s.mask, s.shadow + delta, tf.zeros_like(delta))
            s.shadow.assign(new)
            kernel.assign(quantize_tf(new, s.centres))

    def _float_step_impl(self):
        """Full-precision phase: the kernel keeps the optimizer's step on its support."""
        for s in self.slots:
            kernel = _value(s.kernel.variable)
            new = tf.where(s.mask, tf.convert_to_tensor(kernel), tf.zeros_like(s.shadow))
            s.shadow.assign(new)
            kernel.assign(new)

    def _tap(self, variable, grad):
        """Adds each centre's loss gradient (summed over its weights) to ``centre_grad``."""
        s = self._slot_of.get(getattr(variable, "path", None))
        if s is None:  # not a compressible kernel
            return
        n = tf.shape(s.centres)[0]
        values = tf.reshape(s.shadow, [-1])  # (size,)
        mid = 0.5 * (s.centres[1:] + s.centres[:-1])
        idx = tf.minimum(tf.searchsorted(mid, values, side="left"), s.used - 1)  # padding -> last
        kept = tf.reshape(s.mask, [-1]) & (values != 0)
        g = tf.where(kept, tf.reshape(tf.cast(grad, tf.float32), [-1]), 0.0)
        s.centre_grad.assign_add(tf.math.unsorted_segment_sum(g, tf.cast(idx, tf.int32), n))

    def _centre_step_impl(self, lr):
        """One Adam step on every codebook's real centres, then re-quantization."""
        b1, b2, eps = 0.9, 0.999, 1e-7
        t = tf.cast(self._centre_step.assign_add(1), tf.float32)
        for s in self.slots:
            real = tf.range(tf.shape(s.centres)[0]) < s.used
            movable = real & ((s.centres != 0) if self.reserve_zero else tf.ones_like(real))
            g = tf.where(movable, s.centre_grad, 0.0)
            m = s.centre_m.assign(b1 * s.centre_m + (1 - b1) * g)
            v = s.centre_v.assign(b2 * s.centre_v + (1 - b2) * tf.square(g))
            step = lr * (m / (1 - b1**t)) / (tf.sqrt(v / (1 - b2**t)) + eps)
            c = tf.where(movable, s.centres - step, s.centres)
            last = tf.gather(c, s.used - 1)
            c = tf.where(real, c, last)  # padding repeats the last real centre
            order = tf.argsort(c, stable=True)  # centres that crossed: moments follow
            s.centres.assign(tf.gather(c, order))
            s.centre_m.assign(tf.gather(s.centre_m, order))
            s.centre_v.assign(tf.gather(s.centre_v, order))
            s.centre_grad.assign(tf.zeros_like(s.centre_grad))
            _value(s.kernel.variable).assign(quantize_tf(s.shadow, s.centres))

    def _refresh_impl(self):
        """A few Lloyd iterations on each codebook, then re-quantization."""
        for s in self.slots:
            values = tf.boolean_mask(s.shadow, s.mask)
            values = tf.boolean_mask(values, values != 0)
            s.centres.assign(
                _lloyd(values, tf.convert_to_tensor(s.centres), self.reserve_zero,
                       self.lloyd_iters)
            )
            _value(s.kernel.variable).assign(quantize_tf(s.shadow, s.centres))

    def _requantize(self) -> None:
        for s in self.slots:
            _value(s.kernel.variable).assign(quantize_tf(s.shadow, s.centres))

    def full_refresh(self) -> None:
        """Runs Lloyd to convergence from every running codebook, then re-quantizes."""
        for s in self.slots:
            values = tf.boolean_mask(s.shadow, s.mask)
            values = tf.boolean_mask(values, values != 0)  # (nnz,)
            if int(tf.size(values)) == 0:
                continue
            s.centres.assign(_lloyd_to_convergence(
                values, tf.convert_to_tensor(s.centres), self.reserve_zero))
        self._requantize()

    # ------------------------------------------------------------ fit hooks
    def _refresh_every(self) -> int:
        steps = (self.params or {}).get("steps")
        if not steps:
            return _DEFAULT_REFRESH_EVERY
        return max(1, int(steps) // self.refresh_per_epoch)

    def on_train_begin(self, logs=None):
        self.build(self.model)
        _build_before_fit(self.model)
        if self.train_centres and self._tapped is not self.model.optimizer:
            optimizer = self.model.optimizer
            if not hasattr(optimizer, "add_gradient_tap"):
                raise _bad("train_centres", True, "the model compiled with a "
                           f"sqjl_tf.ADMMOptimizer (got {type(optimizer).__name__}), which "
                           "passes the gradients of the kernels to the callback")
            optimizer.add_gradient_tap(self._tap)
            self._tapped = optimizer
            if getattr(self.model, "train_function", None) is not None:
                self.model.make_train_function(force=True)  # a step traced before has no tap

    def _check_state(self, epoch: int) -> None:
        """At the first epoch after :meth:`build`: does the state match ``epoch``?

        A state restored from a run's checkpoint has done ``epoch`` epochs. A
        fresh one (no epoch done) starting at ``epoch`` > 0 has no saved state:
        :meth:`_resume_schedule` recovers the pruning schedule's position.
        """
        self._resume_checked = True
        done = int(self._epochs_done.numpy())
        if done == epoch:
            return
        if done == 0:
            self._resume_schedule(epoch)
        else:
            logging.warning("Fine-tuning: fit starts at epoch %d, the callback's state has done "
                            "%d epochs; its schedules go on from the state.", epoch, done)
        self._epochs_done.assign(epoch)

    def _resume_schedule(self, epoch: int) -> None:
        """Without saved state, on resuming at ``epoch``: the pruning schedule's position.

        The step is ``epoch`` epochs of batches. The model saved after epoch
        ``e`` holds ``n = t + (s - t) (1 - e/E)**3`` nonzeros per kernel (E =
        ``prune_epochs``, t = ``prune_to``), so the start ``s`` is recovered from
        ``n`` (to rounding) and the schedule goes on about where it was. A
        checkpoint with the callback's state (:meth:`checkpoint_variables`)
        needs none of this: it resumes exactly.
        """
        steps = int((self.params or {}).get("steps") or 0)
        self.prune_step.assign(min(epoch, self.prune_epochs) * steps)
        fraction = epoch / self.prune_epochs if self.prune_epochs else 1.0
        if self.prune_to is None or self._pruned or epoch == 0 or fraction >= 1.0:
            return
        self._prune_start.assign([
            min(int(s.mask.shape.num_elements()),
                int(round(t + (n - t) / (1.0 - fraction) ** 3)))
            for s, n, t in zip(self.slots, self._prune_from, self.prune_to)])
        logging.info("Fine-tuning resumed at epoch %d of the pruning schedule without its saved "
                     "state: started from about %s nonzeros.", epoch, self._prune_from)

    def on_epoch_begin(self, epoch, logs=None):
        if not self._resume_checked:
            self._check_state(epoch)
        if epoch >= self.float_epochs:  # also on resuming past the full-precision phase
            self.start_quantizing()
        self._last_batch = -1
        self._batches = 0

    def on_train_batch_end(self, batch, logs=None):
        if not self.quantizing:
            self._float_step_fn()
            if not self._pruned and self.prune_epochs:
                self.prune_step.assign_add(batch - self._last_batch)
                step = int(self.prune_step.numpy())
                self._last_batch = batch
                total = self._prune_total()
                every = max(1, min(_PRUNE_EVERY, total // 20))
                if step % every == 0 or step >= total:
                    self._prune(min(1.0, step / total))
            return
        self._step_fn()
        done = batch - self._last_batch  # > 1 with steps_per_execution > 1
        self._last_batch = batch
        if self.train_centres:
            self._centre_fn(tf.cast(self.model.optimizer.learning_rate, tf.float32))
        elif self.refresh_per_epoch > 0:
            every = self._refresh_every()
            if (self._batches + done) // every > self._batches // every:
                self._refresh_fn()
        self._batches += done

    def _prune_total(self) -> int:
        return self.prune_epochs * int((self.params or {}).get("steps") or _DEFAULT_REFRESH_EVERY)

    def on_epoch_end(self, epoch, logs=None):
        if not self._pruned and self.prune_epochs and not self.quantizing:
            self._prune(min(1.0, int(self.prune_step.numpy()) / self._prune_total()))
        self._epochs_done.assign_add(1)
        # The last full-precision epoch ends in full precision: its checkpoint is the model
        # it validated; the next epoch (or the end of fit) quantizes.
        if self.quantizing and not self.train_centres:
            self.full_refresh()
        if logs is not None:
            logs["size_bits"] = float(self.size_bits())

    def on_train_end(self, logs=None):
        self.start_quantizing()
        self._requantize()

    # ------------------------------------------------------------ results
    def size_bits(self) -> int:
        """``sum_l b_l * nnz_l`` of the model's (quantized) kernels now."""
        return compression_report(
            [(s.kernel.name, s.kernel.variable) for s in self.slots]
        ).size_bits

    def finalize(self) -> keras.Model:
        """A copy of the model with every kernel quantized (the fine-tuned model).

        Returns:
            A new Keras model (same architecture and weights) whose kernels are
            ``Q(W_fp)``; its size is at most :attr:`initial_size_bits`. After
            training a :class:`~sqjl_tf.Distiller`, the copy is its student's.

        Raises:
            RuntimeError: if called before ``fit`` or :meth:`build`.
        """
        if self._built_for is None:
            raise RuntimeError(
                "QuantizedFinetuneCallback.finalize() called before fit(): there is no state."
            )
        self.start_quantizing()
        self._requantize()
        model = self._built_for
        if isinstance(model, Distiller):  # trained with a teacher: the student ships
            model = model.student
        return _copy_model(model)


def _copy_model(model: keras.Model) -> keras.Model:
    clone = uncompiled_copy(model)
    if clone is None:
        logging.warning("%s cannot be rebuilt from its config (no get_config): the quantized "
                        "kernels are the trained model's own.", model.name)
        detach_optimizer(model)
        return model
    return clone


def finetune_finalize(
    model: keras.Model,
    weightbits: Union[None, str, Sequence[int]] = None,
    reserve_zero: bool = True,
    predicate: Optional[Callable] = None,
) -> keras.Model:
    """Returns a copy of ``model`` with every kernel quantized with its frozen width.

    The widths are those :class:`QuantizedFinetuneCallback` would freeze
    (``weightbits`` lowered to the measured ones, or the measured ones), the
    codebooks the full k-means of :func:`sqjl_tf.projections.codebook`; zeros
    stay zero, so the size never exceeds the model's.

    Args:
        model: a built Keras model (e.g. pruned, or fine-tuned).
        weightbits: per-layer widths, list or comma string (None: measured).
        reserve_zero: keep 0 as a fixed centre.
        predicate: kernel predicate, as in ``compressible_kernels``.

    Returns:
        A new model (clone) with quantized kernels.

    Raises:
        ValueError: on invalid ``weightbits``.

    Example:
        >>> quantized = finetune_finalize(pruned_model, weightbits=[4, 4, 3])
    """
    helper = QuantizedFinetuneCallback(weightbits, reserve_zero=reserve_zero, predicate=predicate)
    kernels = compressible_kernels(model, predicate)
    bits = helper._resolve_bits(kernels)
    clone = _copy_model(model)
    by_path = {}
    for k, b in zip(kernels, bits):
        w = np.asarray(keras.ops.convert_to_numpy(k.variable), np.float32)
        by_path[k.variable.path] = projections.quantize(
            w, projections.codebook(w, b, reserve_zero)
        )
    for src, dst in zip(model.weights, clone.weights):
        if src.path in by_path:
            dst.assign(by_path[src.path])
    return clone
