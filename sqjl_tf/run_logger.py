"""Per-epoch records of a run: metrics.jsonl and checkpoints (latest, best, periodic)."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Callable, Optional

import keras
import numpy as np
from absl import logging

from sqjl_tf.checkpoint import save_checkpoint

METRICS_FILE = "metrics.jsonl"
LATEST = "latest.ckpt.npz"
BEST = "best.ckpt.npz"


def _plain(value):
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class RunLogger(keras.callbacks.Callback):
    """Writes one JSON object per epoch and keeps the checkpoints of a run.

    The JSON record holds the epoch, the Keras logs (loss, accuracy and top-5
    of the finalised model under ``val_``, the ADMM logs: compression rate,
    residuals, bits and nnz per layer), the learning rate and the epoch's
    seconds. Checkpoints: ``latest.ckpt.npz`` every epoch, ``best.ckpt.npz``
    when ``monitor`` improves, ``epoch_XXXX.ckpt.npz`` every ``save_every``
    epochs; each written atomically, and only by the chief worker.

    Args:
        logdir: output folder.
        optimizer: the optimizer to checkpoint.
        admm_state: a callable returning the ``ADMMState`` (or None).
        save_every: epochs between periodic checkpoints (0: none).
        monitor: the log key that selects the best checkpoint.
        is_chief: whether this worker writes files.
        extra_eval: optional ``f(epoch) -> dict`` of more metrics (e.g. the
            training-set accuracy for ``eval_tr``).
        best_value: best monitored value so far (when resuming).
    """

    def __init__(
        self,
        logdir: str,
        optimizer,
        admm_state: Callable[[], Optional[object]],
        save_every: int = 0,
        monitor: str = "val_accuracy",
        is_chief: bool = True,
        extra_eval: Optional[Callable[[int], dict]] = None,
        best_value: float = -math.inf,
    ):
        super().__init__()
        self.logdir = logdir
        self.optimizer = optimizer
        self.admm_state = admm_state
        self.save_every = save_every
        self.monitor = monitor
        self.is_chief = is_chief
        self.extra_eval = extra_eval
        self.best_value = best_value
        self._start = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.time()
        try:  # logged as `lr`: the learning rate the epoch starts with
            self._lr = float(np.asarray(self.optimizer.learning_rate))
        except (TypeError, ValueError):
            self._lr = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if self.extra_eval is not None:
            logs.update(self.extra_eval(epoch))
        record = {"epoch": epoch + 1}
        record.update({k: _plain(v) for k, v in logs.items()})
        if getattr(self, "_lr", None) is not None:
            record["lr"] = self._lr
        record["seconds"] = round(time.time() - self._start, 3)
        if not self.is_chief:
            return
        if not all(np.all(np.isfinite(w.numpy())) for w in self.model.weights):
            logging.error("epoch %d: non-finite weights; no checkpoint written.", epoch + 1)
            return
        with open(os.path.join(self.logdir, METRICS_FILE), "a") as f:
            f.write(json.dumps(record) + "\n")
        value = logs.get(self.monitor)
        improved = value is not None and math.isfinite(float(value)) and value > self.best_value
        if improved:
            self.best_value = float(value)
        meta = {"epoch": epoch + 1, "best_value": self.best_value, "monitor": self.monitor}
        state = self.admm_state()
        save_checkpoint(os.path.join(self.logdir, LATEST), self.model, self.optimizer, state, meta)
        if improved:
            save_checkpoint(os.path.join(self.logdir, BEST), self.model, self.optimizer, state, meta)
        if self.save_every and (epoch + 1) % self.save_every == 0:
            path = os.path.join(self.logdir, f"epoch_{epoch + 1:04d}.ckpt.npz")
            save_checkpoint(path, self.model, self.optimizer, state, meta)
        logging.info(
            "epoch %d: %s",
            epoch + 1,
            ", ".join(f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, float) and "/" not in k),
        )


class BatchLogger(keras.callbacks.Callback):
    """Logs the training metrics every ``interval`` batches (the reference's ``log_interval``)."""

    def __init__(self, interval: int):
        super().__init__()
        self.interval = interval

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % self.interval == 0 and logs:
            logging.info("batch %d: %s", batch + 1,
                         ", ".join(f"{k}={float(v):.4f}" for k, v in logs.items()))
