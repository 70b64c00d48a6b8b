"""A custom training loop driving the same ADMM state as the callback.

Keras 3 ``fit`` does not run under ``MultiWorkerMirroredStrategy``
(keras-team/keras#20585); this loop does: ``strategy.run`` over
``experimental_distribute_dataset``, with the same model, the same
:class:`~sqjl_tf.optimizer.ADMMOptimizer` and the same
:class:`~sqjl_tf.admm.ADMMState` as ``fit`` + ``ADMMCallback``.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

import keras
import tensorflow as tf
from absl import logging

from sqjl_tf import guards


def train_loop(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    dataset: tf.data.Dataset,
    epochs: int,
    loss: keras.losses.Loss,
    global_batch_size: int,
    state=None,
    strategy: Optional[tf.distribute.Strategy] = None,
    initial_epoch: int = 0,
    on_epoch_end: Optional[Callable[[int, Dict[str, float]], None]] = None,
) -> List[Dict[str, float]]:
    """Trains ``model`` with ``strategy.run``, running the ADMM schedule.

    Args:
        model: the model, created under ``strategy.scope()``.
        optimizer: its optimizer (usually an ``ADMMOptimizer`` bound to ``state``).
        dataset: batched by the *global* batch size, (x, y) pairs.
        epochs: last epoch (exclusive), as ``fit``'s ``epochs``.
        loss: a Keras loss; its per-example values are averaged over the
            global batch.
        global_batch_size: the batch size of ``dataset``.
        state: the ``ADMMState`` (None: plain training).
        strategy: the distribution strategy (default: the current one).
        initial_epoch: first epoch (resuming).
        on_epoch_end: ``f(epoch, logs)`` called after each epoch.

    Returns:
        The list of per-epoch logs (mean loss and the ADMM logs).

    Raises:
        NonFiniteError: when the loss, a gradient or a weight becomes NaN/inf
            (the message names the epoch and batch).
    """
    strategy = strategy or tf.distribute.get_strategy()
    per_example = loss.__class__.from_config({**loss.get_config(), "reduction": "none"})
    distributed = strategy.experimental_distribute_dataset(dataset)
    if not optimizer.built:
        with strategy.scope():
            optimizer.build(model.trainable_variables)

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            values = per_example(y, logits)
            scaled = tf.nn.compute_average_loss(values, global_batch_size=global_batch_size)
            if model.losses:
                scaled += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return scaled

    @tf.function
    def train_step(batch):
        x, y = batch
        per_replica = strategy.run(replica_step, args=(x, y))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    if state is not None:
        state.start()
    history = []
    seen_gradient_steps = guards.non_finite_gradient_steps(optimizer)
    for epoch in range(initial_epoch, epochs):
        total, count = 0.0, 0
        for batch in distributed:
            loss_value = float(train_step(batch))
            count += 1
            # As NonFiniteGuard in fit: the loss, the gradients and the weights, before
            # the projections can meet a NaN.
            what = guards.find_non_finite(model, optimizer, loss_value, seen_gradient_steps)
            if what is not None:
                raise guards.NonFiniteError(guards.non_finite_message(what, epoch + 1, count))
            total += loss_value
            if state is not None:
                state.after_batches(1)
        logs = {"loss": total / max(count, 1)}
        if state is not None:
            logs.update(state.end_epoch())
        logging.info("epoch %d: loss %.4f", epoch + 1, logs["loss"])
        history.append(logs)
        if on_epoch_end is not None:
            on_epoch_end(epoch, logs)
    return history
