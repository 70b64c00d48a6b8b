"""Per-epoch records of a run: metrics.jsonl and checkpoints (latest, best, periodic)."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Callable, Dict, Mapping, Optional

import keras
import numpy as np
from absl import logging

from sqjl_tf._files import write_text
from sqjl_tf.checkpoint import save_checkpoint
from sqjl_tf.rundir import RunDir


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
    seconds. Checkpoints: ``latest.ckpt`` every epoch, ``best.ckpt``
    when ``monitor`` improves, ``epoch_XXXX.ckpt`` every ``save_every``
    epochs; each written atomically, and only by the chief worker.

    The epoch's record is appended before its checkpoints are written, and
    ``latest.ckpt`` is written last: a run killed in between resumes from
    the previous ``latest``, after :func:`truncate_metrics` has dropped the
    records of the epochs it does not hold (the best and periodic checkpoints
    of the epoch are written again).

    Args:
        logdir: output folder.
        optimizer: the optimizer to checkpoint.
        admm_state: a callable returning the ``ADMMState`` (or None).
        save_every: epochs between periodic checkpoints (0: none).
        monitor: the log key that selects the best checkpoint: lower is better
            for a loss (a key ending in ``loss``), higher for anything else.
        is_chief: whether this worker writes files.
        extra_eval: optional ``f(epoch) -> dict`` of more metrics (e.g. the
            training-set accuracy for ``eval_tr``).
        best_value: best monitored value so far (when resuming; None: none yet).
        log_epochs: log one line per epoch (False where Keras's ``fit`` prints its own).
        variables: optional callable returning further run state to
            checkpoint, ``{name: variable}`` (see ``save_checkpoint``).
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
        best_value: Optional[float] = None,
        variables: Optional[Callable[[], Mapping[str, Any]]] = None,
        log_epochs: bool = True,
    ):
        super().__init__()
        self.log_epochs = log_epochs
        self.logdir = logdir
        self.optimizer = optimizer
        self.admm_state = admm_state
        self.save_every = save_every
        self.monitor = monitor
        self.is_chief = is_chief
        self.extra_eval = extra_eval
        self._lower_is_better = monitor.endswith("loss")
        if best_value is None or not math.isfinite(best_value):
            best_value = math.inf if self._lower_is_better else -math.inf
        self.best_value = float(best_value)
        self.variables = variables
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
        with open(os.path.join(self.logdir, RunDir.METRICS), "a") as f:
            f.write(json.dumps(record) + "\n")
        value = logs.get(self.monitor)
        improved = value is not None and math.isfinite(float(value)) and (
            value < self.best_value if self._lower_is_better else value > self.best_value)
        if improved:
            self.best_value = float(value)
        meta = {"epoch": epoch + 1, "best_value": self.best_value, "monitor": self.monitor}
        state = self.admm_state()
        variables = self.variables() if self.variables is not None else None

        def save(name):
            save_checkpoint(os.path.join(self.logdir, name), self.model, self.optimizer, state,
                            meta, variables)

        if improved:
            save(RunDir.BEST)
        if self.save_every and (epoch + 1) % self.save_every == 0:
            save(RunDir.epoch_checkpoint(epoch + 1))
        save(RunDir.LATEST)  # last: what a resumed run continues from
        if not self.log_epochs:  # Keras's own line shows the epoch
            return
        logging.info(
            "epoch %d: %s",
            epoch + 1,
            ", ".join(f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, float) and "/" not in k),
        )


def truncate_metrics(logdir: str, epochs: int) -> int:
    """Keeps in ``logdir/metrics.jsonl`` one record per epoch, of the first ``epochs`` only.

    Done when a run resumes from a checkpoint of epoch ``epochs``: a run killed
    after writing an epoch's record but before its checkpoint left a record the
    resumed run writes again. Lines that are not a record (a write cut short)
    are dropped; of several records of one epoch (a resume before this was
    done) the last is kept. The file is replaced atomically.

    Args:
        logdir: the run's folder.
        epochs: the number of epochs the checkpoint holds.

    Returns:
        The number of lines dropped.
    """
    path = os.path.join(logdir, RunDir.METRICS)
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        lines = f.read().splitlines()
    kept: Dict[int, str] = {}
    for line in lines:
        try:
            epoch = json.loads(line).get("epoch")
        except (ValueError, AttributeError):  # a cut line, or not an object
            continue
        if isinstance(epoch, int) and 1 <= epoch <= epochs:
            kept[epoch] = line
    dropped = len(lines) - len(kept)
    if dropped:
        write_text(path, "".join(kept[e] + "\n" for e in sorted(kept)))
        logging.info("%s: dropped %d line(s) of epochs after epoch %d, which the checkpoint "
                     "holds (or repeated, or cut short).", path, dropped, epochs)
    return dropped


class BatchLogger(keras.callbacks.Callback):
    """Logs the training metrics every ``interval`` batches (the reference's ``log_interval``)."""

    def __init__(self, interval: int):
        super().__init__()
        self.interval = interval

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % self.interval == 0 and logs:
            logging.info("batch %d: %s", batch + 1,
                         ", ".join(f"{k}={float(v):.4f}" for k, v in logs.items()))


class ConsoleLogs(keras.callbacks.Callback):
    """Drops the per-layer entries (keys with "/") from the logs Keras prints.

    Place it after the callbacks that record them (``RunLogger``, TensorBoard):
    Keras's progress line, which runs after every callback given to ``fit``,
    then shows one readable line per epoch.
    """

    def on_epoch_end(self, epoch, logs=None):
        for key in [k for k in (logs or {}) if "/" in k]:
            del logs[key]
