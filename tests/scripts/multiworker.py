"""One worker of a MultiWorkerMirroredStrategy ADMM run (or a single process without TF_CONFIG).

Usage: multiworker.py OUT_JSON. Writes the final bits, nnz and weights digest.
"""

import hashlib
import json
import os
import sys

import tensorflow as tf

strategy = (tf.distribute.MultiWorkerMirroredStrategy() if os.environ.get("TF_CONFIG")
            else tf.distribute.get_strategy())

import keras  # noqa: E402
import numpy as np  # noqa: E402

import sqjl_tf  # noqa: E402

rng = np.random.default_rng(0)
x = rng.standard_normal((512, 16)).astype("float32")
y = np.argmax(x @ rng.standard_normal((16, 4)), 1).astype("int32")
keras.utils.set_random_seed(0)
with strategy.scope():
    model = keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(4)]
    )
    cb = sqjl_tf.ADMMCallback(nnz_budget=0.2, bit_budget=4, rho=0.05, projint=4, dualint=8)
    state = cb.build(model)
    opt = sqjl_tf.ADMMOptimizer(keras.optimizers.SGD(0.05, momentum=0.9), cb, weight_decay=1e-4)
data = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
options = tf.data.Options()
options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
data = data.with_options(options)
history = sqjl_tf.train_loop(model, opt, data, 3, keras.losses.SparseCategoricalCrossentropy(
    from_logits=True), 64, state=state, strategy=strategy)
final = sqjl_tf.finalize_model(model, state)
report = sqjl_tf.compression_report(final, budget_bits=state.budget_bits)
weights = [w.numpy() for w in model.weights]
with open(sys.argv[1], "w") as f:
    json.dump({
        "workers": strategy.num_replicas_in_sync,
        "bits": state.current_bits, "nnz": state.current_nnz,
        "within_budget": report.within_budget,
        "digest": hashlib.sha256(b"".join(w.tobytes() for w in weights)).hexdigest(),
        "weights": [w.ravel()[:200].tolist() for w in weights],
        "loss": [h["loss"] for h in history],
    }, f)
