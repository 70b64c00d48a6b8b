"""Numerical faults: stop on a NaN/inf loss with a clear error, or recover."""

from __future__ import annotations

import math
from typing import Callable, Optional

import keras
from absl import logging


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class NonFiniteGuard(keras.callbacks.Callback):
    """Watches the training loss after every batch.

    When it becomes NaN or inf the run stops with :class:`NonFiniteLossError`
    naming the epoch and batch (so no epoch-end checkpoint is written and the
    last good one stays), unless ``max_recoveries`` allows a recovery:
    ``restore()`` reloads the last good checkpoint, the learning rate is
    multiplied by ``factor`` (through ``lr_scale``), and training goes on.

    Args:
        restore: ``f() -> bool`` reloading the last good state; False if there
            is none.
        lr_scale: a ``tf.Variable`` multiplying the learning rate.
        factor: what ``lr_scale`` is multiplied by at each recovery.
        max_recoveries: recoveries allowed in the run (0: always stop).
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
        self.recoveries = 0
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(float(loss)):
            return
        where = f"epoch {self._epoch + 1}, batch {batch + 1}"
        if self.recoveries < self.max_recoveries and self.restore is not None and self.restore():
            self.recoveries += 1
            if self.lr_scale is not None:
                self.lr_scale.assign(self.lr_scale * self.factor)
            self.model.reset_metrics()
            logging.warning(
                "Loss became %s at %s: restored the last good checkpoint and scaled the "
                "learning rate by %g (recovery %d of %d).",
                loss, where, self.factor, self.recoveries, self.max_recoveries,
            )
            return
        self.model.stop_training = True
        raise NonFiniteLossError(
            f"The training loss became {loss} at {where}. Training stopped; the last good "
            "checkpoint was kept. Lower the learning rate, or allow recoveries (--nan_recover)."
        )
