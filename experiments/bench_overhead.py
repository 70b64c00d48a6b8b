"""Benchmark: per-step cost of ADMMCallback + ADMMOptimizer over plain ``fit``.

LeNet-5 (20-50-500-10) on Fashion-MNIST-sized batches (28x28x1, batch 256),
projections once per epoch. Plain and ADMM runs alternate in one process, and
the median step time of each is compared (the epoch-end projections are not
steps; their time is printed separately).

Usage:
    python experiments/bench_overhead.py [--rounds=3 --steps=60 --batch_size=256]
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import sqjl_tf  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("rounds", 3, "Alternating plain/ADMM rounds.", lower_bound=1)
flags.DEFINE_integer("steps", 60, "Steps per epoch.", lower_bound=5)
flags.DEFINE_integer("batch_size", 256, "Batch size.", lower_bound=1)


class _StepTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self._t = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._t)


def _data(n):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, n).astype("int32")
    return x, y


def _run(admm: bool, x, y):
    keras.utils.set_random_seed(0)
    model = sqjl_tf.build_model("caffelenet", num_classes=10)
    inner = keras.optimizers.SGD(0.01, momentum=0.9)
    callbacks = [_StepTimer()]
    if admm:
        cb = sqjl_tf.ADMMCallback(nnz_budget=0.02, bit_budget=3, rho=0.05, prox=True)
        optimizer = sqjl_tf.ADMMOptimizer(inner, cb, weight_decay=5e-4)
        callbacks.insert(0, cb)
    else:
        optimizer = inner
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    start = time.perf_counter()
    model.fit(x, y, batch_size=FLAGS.batch_size, epochs=2, verbose=0, callbacks=callbacks,
              shuffle=False)
    total = time.perf_counter() - start
    steps = callbacks[-1].times[FLAGS.steps // 2:]  # drop the compile-time first steps
    return steps, total


def main(argv):
    del argv
    x, y = _data(FLAGS.steps * FLAGS.batch_size)
    plain, admm = [], []
    totals = {"plain": [], "admm": []}
    for _ in range(FLAGS.rounds):
        steps, total = _run(False, x, y)
        plain += steps
        totals["plain"].append(total)
        steps, total = _run(True, x, y)
        admm += steps
        totals["admm"].append(total)
    med_plain, med_admm = float(np.median(plain)), float(np.median(admm))
    extra = np.median(totals["admm"]) - np.median(totals["plain"])
    sys.stdout.write(
        f"LeNet-5, batch {FLAGS.batch_size}, {FLAGS.rounds} rounds x 2 epochs x {FLAGS.steps} steps\n"
        f"median step time: plain fit {med_plain * 1e3:.2f} ms, ADMM callback+wrapper "
        f"{med_admm * 1e3:.2f} ms\n"
        f"ratio (ADMM / plain): {med_admm / med_plain:.3f}\n"
        f"whole-run difference per 2 epochs (start-up + epoch-end projections included): "
        f"{extra:.2f} s\n"
    )


if __name__ == "__main__":
    app.run(main)
