"""Numerical faults: stop on NaN/inf with a clear error, or recover.

A NaN can reach training three ways: through the loss, through a gradient
while the loss stays finite (a NaN in a layer's backward pass, or the loss
Keras logs being a running mean of finite batches), and into the weights
(an overflowing step). :func:`find_non_finite` checks all three, the way
``keras.optimizers.LossScaleOptimizer`` checks its gradients; the callback
:class:`NonFiniteGuard` runs it after every batch of ``fit``, and the custom
training loop (``loop.train_loop``) after every step, so no NaN ever reaches
the projections, whose k-means and knapsack would otherwise fail obscurely.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from sqjl_tf._state import variable_property


class NonFiniteError(FloatingPointError):
    """Training became NaN or infinite (the loss, a gradient or a weight)."""


NonFiniteLossError = NonFiniteError  # the name before weights and gradients were watched


def _is_float(variable) -> bool:
    return tf.as_dtype(variable.dtype).is_floating  # keras.Variable.dtype is a string


def _all_finite(variables) -> tf.Tensor:
    checks = [tf.reduce_all(tf.math.is_finite(v)) for v in variables if _is_float(v)]
    return tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)


def non_finite_weights(model) -> Optional[str]:
    """The path of the first weight of ``model`` holding NaN/inf, or None."""
    weights = list(model.weights)
    if bool(_all_finite(weights)):
        return None
    for w in weights:
        if _is_float(w) and not np.all(np.isfinite(np.asarray(w.numpy()))):
            return getattr(w, "path", None) or w.name
    return None  # pragma: no cover - _all_finite said otherwise


def non_finite_gradient_steps(optimizer) -> int:
    """How many steps ``optimizer`` met a NaN/inf gradient (0 when it does not count them)."""
    counter = getattr(optimizer, "non_finite_steps", None)
    return int(counter.numpy()) if counter is not None else 0


def find_non_finite(model, optimizer=None, loss=None, seen_gradient_steps: int = 0):
    """What became non-finite, in words, or None when all is finite.

    Args:
        model: the model whose weights are checked.
        optimizer: an optimizer counting non-finite gradients
            (``ADMMOptimizer.non_finite_steps``), or None.
        loss: the batch's loss value, or None.
        seen_gradient_steps: the counter's value already accounted for.

    Returns:
        ``"the loss is nan"``, ``"a gradient held NaN/inf"`` or ``"the weight
        `dense/kernel` holds NaN/inf"``; None if everything is finite.
    """
    if loss is not None and not math.isfinite(float(loss)):
        return f"the loss is {float(loss)}"
    if optimizer is not None and non_finite_gradient_steps(optimizer) > seen_gradient_steps:
        return "a gradient held NaN/inf"
    bad = non_finite_weights(model)
    if bad is not None:
        return f"the weight `{bad}` holds NaN/inf"
    return None


def non_finite_message(what: str, epoch: int, batch: Optional[int] = None) -> str:
    """The error text (``epoch`` and ``batch`` counted from 1; no batch: the epoch's end)."""
    where = f"epoch {epoch}, batch {batch}" if batch is not None else f"the end of epoch {epoch}"
    return (
        f"Training became non-finite at {where} ({what}). Training stopped; the last good "
        "checkpoint (if one was written) was kept. Lower the learning rate, or allow "
        "recoveries (--nan_recover)."
    )


class NonFiniteGuard(keras.callbacks.TerminateOnNaN):
    """Checks the loss, the gradients and the weights after every batch.

    Keras's ``TerminateOnNaN`` watches the logged loss only and stops quietly.
    This guard also catches a NaN/inf gradient (counted by ``ADMMOptimizer``)
    and NaN/inf weights while the loss is still finite, and raises
    :class:`NonFiniteError` naming the epoch and batch (so no epoch-end
    checkpoint is written and the last good one stays), unless
    ``max_recoveries`` allows a recovery: ``restore()`` reloads the last good
    checkpoint, the learning rate is multiplied by ``factor`` (through
    ``lr_scale``), and training goes on. Put it first in the callback list, so
    that it runs before the callbacks that project the weights.

    Args:
        restore: ``f() -> bool`` reloading the last good state; False if there
            is none.
        lr_scale: a ``tf.Variable`` multiplying the learning rate.
        factor: what ``lr_scale`` is multiplied by at each recovery.
        max_recoveries: recoveries allowed in the run (0: always stop); the
            count done is kept in ``recoveries_variable`` (checkpoint it, with
            ``lr_scale``, but do not let ``restore()`` load it back).

    Example:
        >>> model.fit(data, epochs=3, callbacks=[sqjl_tf.NonFiniteGuard(), cb])
    """

    def __init__(
        self,
        restore: Optional[Callable[[], bool]] = None,
        lr_scale=None,
        factor: float = 0.5,
        max_recoveries: int = 0,
    ):
        super().__init__()
        self.restore = restore
        self.lr_scale = lr_scale
        self.factor = factor
        self.max_recoveries = max_recoveries
        # A variable, so that a run's checkpoint holds it: a resumed run has the recoveries left.
        self.recoveries_variable = tf.Variable(0, dtype=tf.int64, trainable=False,
                                               name="nan_recoveries")
        self._epoch = 0
        self._gradient_steps = 0

    recoveries = variable_property(
        "recoveries_variable", int, "Recoveries done in the run (``recoveries_variable``'s value).")

    def on_train_begin(self, logs=None):
        self._gradient_steps = non_finite_gradient_steps(self.model.optimizer)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_batch_end(self, batch, logs=None):
        optimizer = getattr(self.model, "optimizer", None)
        what = find_non_finite(self.model, optimizer, (logs or {}).get("loss"),
                               self._gradient_steps)
        self._gradient_steps = non_finite_gradient_steps(optimizer)
        if what is None:
            return
        where = f"epoch {self._epoch + 1}, batch {batch + 1}"
        if self.recoveries < self.max_recoveries and self.restore is not None and self.restore():
            self.recoveries += 1
            if self.lr_scale is not None:
                self.lr_scale.assign(self.lr_scale * self.factor)
            self.model.reset_metrics()
            logging.warning(
                "Training became non-finite at %s (%s): restored the last good checkpoint and "
                "scaled the learning rate by %g (recovery %d of %d).",
                where, what, self.factor, self.recoveries, self.max_recoveries,
            )
            return
        self.model.stop_training = True
        raise NonFiniteError(non_finite_message(what, self._epoch + 1, batch + 1))
