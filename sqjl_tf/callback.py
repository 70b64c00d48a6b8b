"""ADMMCallback: adapts :class:`~sqjl_tf.admm.ADMMState` to Keras's ``fit`` hooks."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, List, Optional

import keras
import numpy as np
from absl import logging

from sqjl_tf._copy import detach_optimizer, uncompiled_copy
from sqjl_tf.admm import ADMMConfig, ADMMState
from sqjl_tf.guards import NonFiniteError, non_finite_message
from sqjl_tf.optimizer import _build_before_fit


class ADMMCallback(keras.callbacks.Callback):
    """Compresses a model to a size budget during ``model.fit``.

    On ``on_train_begin`` it creates the ADMM state (V and U per compressible
    kernel, under the model's distribution strategy) and runs both projections
    once; then the sparse projection every ``projint`` batches and the
    quantization projection with the dual update every ``dualint`` batches
    (0: at the end of each epoch). Validation inside ``fit`` measures the
    finalised model (what :meth:`finalize` returns), not the raw weights, and
    restores the weights afterwards. Per epoch it adds to the logs the ADMM
    residual, the compression rate, and bits, nnz and residual per layer.

    Pair it with :class:`~sqjl_tf.optimizer.ADMMOptimizer`, which applies the
    primal update that pulls W towards V.

    Args:
        nnz_budget: fraction of nonzeros kept, in (0, 1].
        bit_budget: average bits per kept weight, in [1, 8].
        rho: ADMM penalty (at the start; see ``rho_growth``).
        predicate: ``f(layer, variable) -> bool | None`` choosing the kernels:
            True adds a weight, False leaves it out, None keeps the default.
        validate_finalized: evaluate the finalised model during ``fit``.
        per_layer_logs: add bits/nnz/residual of every layer to the logs.
        **options: any other field of :class:`~sqjl_tf.admm.ADMMConfig`, by name
            (e.g. ``projint``, ``dualint``, ``mode``, ``rho_growth``; its
            docstring describes each).

    Raises:
        ValueError: on an invalid value, or a name that is not an option.

    Example:
        >>> cb = sqjl_tf.ADMMCallback(nnz_budget=0.02, bit_budget=3, rho=0.05)
        >>> model.compile(optimizer=sqjl_tf.ADMMOptimizer(keras.optimizers.SGD(0.01), cb),
        ...               loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        >>> model.fit(train, validation_data=val, epochs=30, callbacks=[cb])
        >>> compressed = cb.finalize()
    """

    def __init__(
        self,
        nnz_budget: float = 1.0,
        bit_budget: float = 8,
        rho: float = 1e-3,
        *,
        predicate: Optional[Callable] = None,
        validate_finalized: bool = True,
        per_layer_logs: bool = True,
        **options: Any,
    ):
        super().__init__()
        known = {f.name for f in dataclasses.fields(ADMMConfig)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(
                f"Invalid keyword argument(s) for `ADMMCallback`: {', '.join(unknown)}. "
                f"Expected fields of ADMMConfig: {', '.join(sorted(known))}.")
        self.config = ADMMConfig(nnz_budget=nnz_budget, bit_budget=bit_budget, rho=rho, **options)
        self.predicate = predicate
        self.validate_finalized = validate_finalized
        self.per_layer_logs = per_layer_logs
        self.state: Optional[ADMMState] = None
        self._in_fit = False
        self._epoch_done = False
        self._saved: Optional[List[np.ndarray]] = None
        self._last_batch = -1
        self._epoch = 0
        self._deferred = False

    def build(self, model) -> ADMMState:
        """Creates the ADMM state for ``model`` (done by ``fit``; call it to restore state first)."""
        if self.state is None:
            self.state = ADMMState(self.config, model, self.predicate)
        return self.state

    # ------------------------------------------------------------ fit hooks
    def on_train_begin(self, logs=None):
        self._in_fit = True
        self._deferred = not self.model.weights
        if not self._deferred:
            self.build(self.model).start()
            _build_before_fit(self.model)
        # else: a model that fit() builds in its first step (subclassed, or Sequential
        # without Input): the state starts after that step, which trains it densely.

    def on_train_end(self, logs=None):
        self._in_fit = False

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_done = False
        self._last_batch = -1
        self._epoch = epoch

    def _start_deferred(self, batch: int) -> None:
        self.build(self.model).start()
        self._deferred = False
        self._last_batch = batch
        # The step was traced before the state existed: trace it again with the ADMM terms.
        self.model.make_train_function(force=True)

    def on_train_batch_end(self, batch, logs=None):
        if self._deferred:
            self._start_deferred(batch)
            return
        # With steps_per_execution > 1 this fires every N batches: advance by N.
        try:
            self.state.after_batches(batch - self._last_batch)
        except NonFiniteError as err:  # a NonFiniteGuard placed after this callback
            self.model.stop_training = True
            raise NonFiniteError(non_finite_message(str(err), self._epoch + 1, batch + 1)) from None
        self._last_batch = batch

    def _finish_epoch(self):
        if not self._epoch_done:
            try:
                self._epoch_logs = self.state.end_epoch()
            except NonFiniteError as err:
                self.model.stop_training = True
                raise NonFiniteError(non_finite_message(str(err), self._epoch + 1)) from None
            self._epoch_done = True

    def on_test_begin(self, logs=None):
        if not self._in_fit or self.state is None:
            return
        self._finish_epoch()  # validation shows the model after this epoch's projections
        if self.validate_finalized:
            self._saved = self.state.finalize_in_place()

    def on_test_end(self, logs=None):
        if self._saved is not None:
            self.state.restore_kernels(self._saved)
            self._saved = None

    def on_epoch_end(self, epoch, logs=None):
        self._finish_epoch()
        if logs is not None:
            for key, value in self._epoch_logs.items():
                if self.per_layer_logs or "/" not in key:
                    logs[key] = value

    # ------------------------------------------------------------ results
    def finalize(self, model: Optional[keras.Model] = None, quantize: bool = True) -> keras.Model:
        """A copy of the model with every kernel finalised (the compressed model).

        Args:
            model: the model to copy (default: the one being trained; pass the
                student when training a distillation wrapper).
            quantize: False: the kernels are only pruned by the sparse
                projection and stay in full precision (the budget's support,
                every kept weight nonzero): where a fine-tuning that trains in
                full precision first (``QuantizedFinetuneCallback(float_epochs=...,
                weightbits=callback.state.current_bits)``) starts.

        Returns:
            A new, uncompiled Keras model (same architecture) whose
            compressible kernels are sparse-projected and quantized with their
            bit widths; it holds the budget: ``sum_l b_l * nnz_l <=
            budget_bits`` (see :func:`finalize_model` for models that cannot
            be copied). With
            ``quantize=False`` the kernels hold more distinct values than
            their widths allow, and the size holds once quantized to them.

        Raises:
            RuntimeError: if called before training started.
        """
        if self.state is None:
            raise RuntimeError("ADMMCallback.finalize() called before fit(): there is no state.")
        return finalize_model(model if model is not None else self.model, self.state, quantize)


def finalize_model(model: keras.Model, state: ADMMState, quantize: bool = True) -> keras.Model:
    """Returns ``model`` with its kernels replaced by their finalised values.

    Args:
        model: the trained model.
        state: its ADMM state (bits, budget).
        quantize: False: pruned to the budget only, kernels in full precision.

    Returns:
        An uncompiled copy of the model (same architecture and weights) with
        each compressible kernel pruned to the budget and (``quantize``)
        quantized; its ``sqjl_budget_bits`` is the budget, which
        ``compression_report`` then checks. A model that cannot be rebuilt
        from its config (subclassed, without ``get_config``) is not copied: the
        finalised kernels are written into it and its ADMM optimizer is
        replaced by the inner one (a warning says so).
    """
    finalized = state.finalized_weights() if quantize else state.sparse_weights()
    target = uncompiled_copy(model)
    if target is None:
        logging.warning(
            "%s cannot be rebuilt from its config (no get_config): finalize() wrote the "
            "compressed kernels into the trained model itself and replaced its ADMM optimizer "
            "by the inner one.", model.name)
        target = model
        detach_optimizer(model)
    by_path = {k.variable.path: w for k, w in zip(state.kernels, finalized)}
    for src, dst in zip(model.weights, target.weights):
        if src.path in by_path:
            dst.assign(by_path[src.path])
    target.sqjl_budget_bits = float(state.budget_bits)
    if quantize:
        _log_budget_use(state, finalized)
    return target


def _log_budget_use(state: ADMMState, finalized) -> None:
    """Says how much of the budget the finalised kernels use, when not nearly all of it.

    Quantizing with a zero centre rounds the kept weights nearest zero to zero
    (most at 1-2 bits), so the shipped model can be smaller than its budget.
    """
    bits = state.current_bits
    kept = sum(int(np.count_nonzero(w)) for w in finalized)
    used = sum(b * int(np.count_nonzero(w)) for b, w in zip(bits, finalized))
    planned = sum(b * n for b, n in zip(bits, state.current_nnz))
    if state.budget_bits and used < 0.9 * state.budget_bits:
        logging.info(
            "finalize: the compressed kernels use %.0f%% of the budget (%d nonzeros; %d kept "
            "weights were rounded to the zero centre): the real rate is %.1fx, not %.1fx.",
            100.0 * used / state.budget_bits, kept,
            sum(state.current_nnz) - kept, 32.0 * sum(state.sizes) / max(used, 1),
            32.0 * sum(state.sizes) / max(planned, 1))
